"""``python -m ephemerid.serving``: the prediction service from its settings alone.

The Azure container's command: ``EPHEMERID_SERVING_*`` say what to serve and how, the ordinary
``EPHEMERID_*`` settings where the registry is. It prints one JSON line once it is ready.
"""

from __future__ import annotations

import asyncio
import json
import sys

from ephemerid import sandbox
from ephemerid.errors import EphemeridError
from ephemerid.serving.server import PredictionService, Ready
from ephemerid.serving.settings import ServingSettings
from ephemerid.settings import Settings


def main() -> int:
    try:
        service = PredictionService(ServingSettings.from_env(), Settings.from_env())
        sandbox.undumpable()  # the model's workers (same user) cannot read this one's keys

        def ready(info: Ready) -> None:
            print(json.dumps({"url": info.url, "versions": info.versions}), flush=True)

        asyncio.run(service.serve(service.bind(), ready))
    except EphemeridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
