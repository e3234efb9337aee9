"""The dev host: the functions ``function_app.py`` registers, run on one machine without Azure.

It imports the function app, reads each function's trigger binding the way the Functions host
indexes them, and feeds it from a local stand-in:

- ``blobTrigger``: the bucket (the service's ArtifactStore: a folder, or Azurite), polled; and
  the Event Grid webhook ``POST /runtime/webhooks/blobs?functionName=Host.Functions.<name>``.
- ``queueTrigger``: the Storage queue (Azurite) when the binding's connection is set, else a
  folder queue under the dev host's home.
- ``serviceBusTrigger``: a folder queue under the home; a stand-in, **not** Service Bus (no
  sessions, no lock renewal).
- ``timerTrigger``: a local clock reading the 6-field NCRONTAB schedule.
- ``httpTrigger``: ``http://127.0.0.1:7071/api/<route>`` with the binding's methods and auth.

The user functions are invoked with the real ``azure.functions`` types, and they build their
services through the function app's own factory (``handlers_from_settings``), so what runs here
is what runs in Azure. ``eph dev`` and ``eph demo`` run on it.
"""

from ephemerid.devhost.host import DevHost, Invocation
from ephemerid.devhost.wiring import Wire

__all__ = ["DevHost", "Invocation", "Wire"]
