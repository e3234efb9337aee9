"""The real-time prediction service: a model version's ``load``/``predict`` pair behind HTTP.

``eph serve MODEL@ALIAS`` (or ``python -m ephemerid.serving`` from ``EPHEMERID_SERVING_*``
settings) serves the batch harness's pair over HTTP (``app``), with the model's code in a worker
process of its own (``worker``, ``process``), requests coalesced into one ``predict``
(``batcher``), the registry followed and a split between versions (``router``, ``plan``), keys
and limits (``guard``) and Prometheus counters (``metrics``). See docs/serving.md.
"""
