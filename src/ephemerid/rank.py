"""A runner's place in a distributed launch (torchrun, Azure ML's PyTorch distribution)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Rank:
    """This process's place in a distributed launch; ``Rank()`` is a job of one process."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Rank:
        env = dict(os.environ) if env is None else env
        try:
            rank, world = int(env.get("RANK") or 0), int(env.get("WORLD_SIZE") or 1)
        except ValueError as exc:
            raise ValueError(f"RANK and WORLD_SIZE must be whole numbers: {exc}") from exc
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is not within WORLD_SIZE={world}")
        return cls(rank, world)

    @property
    def leader(self) -> bool:
        return self.rank == 0
