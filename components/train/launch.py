"""Several training processes in one pod or machine: `nproc` DDP ranks of `run_train`.

`train_processes(cfg, ..., nproc=N)` starts N workers through torch elastic's launcher (the
agent `torchrun` runs: single node, c10d rendezvous on a free localhost port, no restarts),
each calling `run_train` as one rank of a DistributedDataParallel job (NCCL on GPUs, Gloo on
CPU); rank 0's metrics come back. `nproc=1` runs `run_train` in this process, as before.
Under an outer `torchrun` (WORLD_SIZE set) this process already is a rank: it trains as one.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

import torch

from components.core import redact
from components.core.cpu_budget import cpu_budget
from components.core.errors import SegloopError
from components.core.logs import quiet_chatty_libraries
from components.train.settings import TrainConfig
from components.train.stage import run_train

log = logging.getLogger(__name__)


def train_processes(
    cfg: TrainConfig, *, data: str, out: str, resume: str | None = None, nproc: int = 1
) -> dict[str, Any]:
    """`run_train` in `nproc` DDP processes (1: in this process); rank 0's metrics."""
    if nproc < 1:
        raise SegloopError(f"train: nproc must be at least 1, got {nproc}")
    if nproc == 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return run_train(cfg, data=data, out=out, resume=resume)
    _check_devices(cfg.train.device, nproc)

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"segloop-train-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as `torchrun --standalone`
        max_restarts=0,  # a failed rank fails the stage; `--resume` continues it
        monitor_interval=0.5,
        start_method="spawn",
    )
    # Each rank gets its share of the CPU budget (torchrun would give each one thread).
    threads = cpu_budget().per_rank(nproc)
    root = logging.getLogger()
    log.info("train: starting %d DDP processes", nproc)
    try:
        results = elastic_launch(launch, _worker)(
            cfg, data, out, resume, threads, root.level if root.handlers else None
        )
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise SegloopError(
            f"train: rank {rank} of {nproc} failed (exit code {failure.exitcode}): "
            f"{_failure_message(failure)}"
        ) from None
    return results[0]


def _check_devices(device: str, nproc: int) -> None:
    """One GPU per rank: refuse more CUDA ranks than GPUs (CPU ranks share the cores)."""
    if device == "cpu" or not torch.cuda.is_available():
        if device.startswith("cuda"):
            raise SegloopError(f"train.device={device} but CUDA is not available here")
        return
    count = torch.cuda.device_count()
    if nproc > count:
        raise SegloopError(
            f"train: {nproc} processes need {nproc} GPUs, this machine sees {count} "
            f"(set --nproc / kfp.gpu.accelerator_count to at most {count}, or train.device=cpu)"
        )


def _failure_message(failure) -> str:
    """The worker's exception, as the elastic error file records it (`@record`)."""
    msg = failure.message
    if isinstance(msg, dict):
        msg = msg.get("message", msg)
        if isinstance(msg, dict):
            msg = msg.get("message", str(msg))
    text = str(msg or "see the worker's output above")
    return text.strip().splitlines()[-1] if text.strip() else text


def _worker(
    cfg: TrainConfig,
    data: str,
    out: str,
    resume: str | None,
    threads: int,
    log_level: int | None,
) -> dict[str, Any]:
    """One rank (a spawned process; RANK, WORLD_SIZE, MASTER_* set by the elastic agent)."""
    from torch.distributed.elastic.multiprocessing.errors import record

    rank = os.environ.get("RANK", "?")
    # A spawned rank starts afresh: mask its logs and output as its parent's (pod logs).
    redact.install()
    redact.guard_streams()
    if log_level is not None:
        logging.basicConfig(
            level=log_level,
            format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
        )
        quiet_chatty_libraries()
    torch.set_num_threads(threads)
    return record(run_train)(cfg, data=data, out=out, resume=resume)
