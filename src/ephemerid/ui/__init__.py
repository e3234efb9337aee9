"""The web dashboard: jobs, a job (live log and metric curves), sweeps, models, compute held now,
refusals; read through the service, scoped to one caller.

``dashboard(service, gate)`` is a Starlette app; `eph ui` serves it on loopback behind a token
(``ephemerid.cli.ui``), and the function app serves the same pages from an HTTP route behind the
function key or App Service authentication (``ephemerid.ui.azure``). It needs
``pip install 'ephemerid[ui]'``.
"""
