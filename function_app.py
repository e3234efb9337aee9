"""ephemerid on Azure Functions (Python v2 programming model).

This file only creates the app and registers ephemerid's functions; the services behind them
are built once, on first use, from the app settings. HTTP functions need a function key.
"""

import azure.functions as func

from ephemerid.functions import handlers_from_settings, register

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
register(app, handlers_from_settings)
