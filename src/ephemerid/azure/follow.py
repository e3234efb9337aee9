"""The prediction service follows an alias: a job that promotes a version under it redeploys it.

With ``EPHEMERID_SERVING_FOLLOW=tabular@production`` (and ``EPHEMERID_SERVING_APP_ID``), the
function app subscribes an ``AliasFollower`` to its service's job records (``Service.subscribe``).
When a job that registers its model under that alias (``register_as: {name: tabular, alias:
production}``) has registered it, the follower moves the whole traffic to the version the alias
names now (``ContainerAppDeployer``: its revision, then the weights, then the old revision
deactivated). Each (job, version) is deployed once per process; a redelivered completion that
finds the service already there writes nothing. A deploy that fails is logged by the service (a
listener never fails a job): ``POST /api/serving/deploy`` with the same model is the retry.

A promotion from the CLI (``eph models promote``) is not seen here: call the route after it.
A canary split set by hand is replaced by the next promotion of the followed alias.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ephemerid.azure.container_app import ContainerAppDeployer
from ephemerid.azure.split_plan import plan_for
from ephemerid.models import ModelRegistry
from ephemerid.record import JobRecord
from ephemerid.spec import ModelRef

log = logging.getLogger("ephemerid")


@dataclass
class AliasFollower:
    registry: ModelRegistry
    follow: ModelRef  # name@alias
    deployer: Callable[[], ContainerAppDeployer]
    deployed: set[tuple[str, str]] = field(default_factory=set)  # (job id, name:version)

    def __call__(self, job: JobRecord) -> None:
        if not self.promotes(job) or (job.id, job.model_version) in self.deployed:
            return
        plan = plan_for(self.registry, self.follow.name, [(self.follow, 100)])
        done = self.deployer().deploy(plan)
        self.deployed.add((job.id, str(job.model_version)))
        log.info("%s moved the prediction service: %s", job.id, done.traffic)

    def promotes(self, job: JobRecord) -> bool:
        """Whether ``job`` has registered a version under the followed alias."""
        target = job.spec.register_as
        return bool(
            job.model_version
            and target is not None
            and (target.name, target.alias) == (self.follow.name, self.follow.alias)
        )
