"""Environments: what a job's code needs besides ephemerid, built once per identity and cached.

``spec`` is the spec's ``environment`` field; ``identity`` checks a requirements file at submit
and hashes what defines an environment; ``build`` makes one under ``envs/<hash>/`` with uv (or
venv + pip), one build per hash at a time; ``cache`` lists and prunes them. The runner imports
``identity`` and ``build``: this package stays light (no service module).
"""
