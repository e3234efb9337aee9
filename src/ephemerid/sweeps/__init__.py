"""Sweeps: a search over a train job's params, each trial an ordinary job (``kind: sweep``).

``spec`` validates a sweep; ``controller`` (mixed into ``Service``) fans out its trials and moves
it on at each event; ``search`` keeps Optuna's study in the sweep's record; ``state`` reads a
sweep's progress without Optuna.
"""

from ephemerid.sweeps.spec import SweepSpec, validate_any, validate_sweep

__all__ = ["SweepSpec", "validate_any", "validate_sweep"]
