"""Data-parallel training with torch.distributed, on one process or many nodes (docs/azure-ml.md).

Submitted as any job it trains in one process. Launched with RANK and WORLD_SIZE (the azure-ml
backend with compute.nodes > 1 and one process per GPU, or torchrun), every process trains on
its own shard of the data and DistributedDataParallel averages the gradients: NCCL on CUDA, gloo
on the CPU. Rank 0 logs the metrics and writes model/model.pt and model/model.json to
EPHEMERID_OUTPUT_DIR (what the runner uploads from rank 0 only).

Params (EPHEMERID_PARAMS): epochs (5), lr (0.5), samples (4096), features (16), seed (0).
Exit code 2: bad params.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ephemerid import track

DEFAULTS: dict[str, Any] = {"epochs": 5, "lr": 0.5, "samples": 4096, "features": 16, "seed": 0}
BATCH = 128


def read_params() -> dict[str, Any]:
    path = os.environ.get("EPHEMERID_PARAMS")
    given = json.loads(Path(path).read_text()) if path else {}
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"unknown params {unknown}: use {sorted(DEFAULTS)}")
    return {**DEFAULTS, **given}


def data(params: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The same synthetic, linearly separable set on every rank (one seed)."""
    generator = torch.Generator().manual_seed(params["seed"])
    x = torch.randn(params["samples"], params["features"], generator=generator)
    w = torch.randn(params["features"], 1, generator=generator)
    return x, (x @ w > 0).float()


def main() -> int:
    try:
        params = read_params()
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    store = None
    if world > 1:  # the launcher's RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, rank == 0
        )
        dist.init_process_group(
            "nccl" if cuda else "gloo", store=store, rank=rank, world_size=world
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank % torch.cuda.device_count()}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)

    x, y = data(params)
    per_rank = len(x) // world  # equal shards: every rank takes the same number of steps
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    xs, ys = x[mine].to(device), y[mine].to(device)
    torch.manual_seed(params["seed"])
    model = nn.Sequential(nn.Linear(params["features"], 32), nn.ReLU(), nn.Linear(32, 1))
    model = model.to(device)
    net = DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.SGD(net.parameters(), lr=params["lr"])
    loss_fn = nn.BCEWithLogitsLoss()
    print(f"rank {rank} of {world} on {device}: {len(xs)} samples", flush=True)

    for epoch in range(params["epochs"]):
        total = torch.zeros(1, device=device)
        for start in range(0, len(xs), BATCH):
            optimizer.zero_grad()
            loss = loss_fn(net(xs[start : start + BATCH]), ys[start : start + BATCH])
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(xs[start : start + BATCH])
        if world > 1:
            dist.all_reduce(total)
        mean = total.item() / (per_rank * world)
        if rank == 0:
            track.log_metric("loss", mean, step=epoch)
            print(f"epoch {epoch}: loss {mean:.4f}", flush=True)

    if rank == 0:
        with torch.no_grad():
            accuracy = ((model(x.to(device)) > 0).float() == y.to(device)).float().mean().item()
        track.log_metric("accuracy", accuracy)
        out = Path(os.environ.get("EPHEMERID_OUTPUT_DIR", ".")) / "model"
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / "model.pt")
        meta = {"features": params["features"], "world_size": world, "accuracy": accuracy}
        (out / "model.json").write_text(json.dumps(meta))
        print(f"accuracy {accuracy:.3f}; model saved", flush=True)
    if store is not None:
        leave_last(store, rank, world)
    return 0


def leave_last(store: dist.TCPStore, rank: int, world: int) -> None:
    """Shut down with rank 0 last: it hosts the store.

    A process whose store client is finalized after the store's host has gone can abort at exit
    ("terminate called without an active exception"; in two-rank CPU runs here: 2 of 33 with a
    plain barrier and destroy_process_group, 2 of 280 with rank 0 only waiting for the others,
    0 of 100 as it is now). So every other rank destroys its process group, tells rank 0 through
    the store, and leaves at once, skipping those finalizers; rank 0 waits for all of them
    before it shuts down.
    """
    dist.barrier()
    if rank != 0:
        dist.destroy_process_group()
        store.add("left", 1)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    while store.add("left", 0) < world - 1:
        time.sleep(0.01)
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
