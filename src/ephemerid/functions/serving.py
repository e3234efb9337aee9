"""``POST /api/serving/deploy``: (re)deploy the prediction service's Container App to a model.

The body names a model ref (all traffic to the version it names now) or a model and a split
(``{"model": "tabular", "split": "tabular:3=90,tabular:4=10"}``), and optionally the image;
aliases are resolved from the registry and unknown versions refused before any ARM call
(ephemerid.azure.split_plan), then ``ContainerAppDeployer`` makes the revisions and sets the
weights (ephemerid.azure.container_app). Call it after ``eph models promote`` (or from anything
that sees a promotion) to move the service; a second call with the same body changes nothing.

Azure refusing a request in another way (an ARM 400, say) answers 502 with ARM's reason.

The route takes the admin (master) key only: the host refuses any other key, and the handler
refuses a caller who is not the admin too (a function key, an Entra principal without the
``ephemerid.admin`` role).
"""

from __future__ import annotations

import azure.functions as func

from ephemerid.azure.split_plan import DeployRequest, plan_for
from ephemerid.errors import BadInput, Conflict, EphemeridError, NotFound, Unavailable
from ephemerid.functions.handlers import Handlers, _answer, _json


def http_serving_deploy(handlers: Handlers, req: func.HttpRequest) -> func.HttpResponse:
    def deploy() -> func.HttpResponse:
        if not handlers.caller(req).admin:
            message = "deploying the prediction service takes the admin (master) key"
            return _json({"error": message}, 403)
        request = DeployRequest.parse(req.get_body())
        model, entries = request.entries()
        plan = plan_for(handlers.service.models, model, entries)
        try:
            deployed = handlers.serving().deploy(plan, request.image)
        except (BadInput, Conflict, NotFound, Unavailable):
            raise  # 400, 409, 404, 503 (ephemerid.functions.handlers._answer)
        except EphemeridError as exc:  # ARM refused what it was sent (a 400, say)
            return _json({"error": f"Azure refused the deploy: {exc}"}, 502)
        return _json(deployed.to_json())

    return _answer(deploy)
