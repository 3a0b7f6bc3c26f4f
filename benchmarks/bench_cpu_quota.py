"""Threads under a CPU quota: segloop's automatic choice inside a CPU-limited cgroup.

A task pod gets a CPU limit (a CFS quota), not its own cores. This bench makes a cgroup limited
to `--cpus` CPUs (v1 `cpu.cfs_quota_us` where the cpu controller is mounted as v1, as on this
host, else v2 `cpu.max`; we must be root), runs each contender in a fresh process inside it,
and removes the cgroup afterwards, also on error or Ctrl-C. Each process times segloop's infer
step (Unet-resnet18 forward of `--batch` x 256^2 tiles, eval, channels_last, inference_mode)
and train step (forward, CombinedLoss, backward, AdamW step, channels_last) with its thread
count:

- auto: `components.core.cpu_budget.apply_torch_threads()` (what every stage runs at its start);
- default: torch's own default (the cores it can see: this machine's);
- 1, 2, 4: the sweep; its best is the bar for auto;
- 16, 64: a big node: torch's default on a 16- or 64-core node, under the same quota.

Rounds alternate the contenders' order; a contender's figure is its best step over every rep
and round (other work on the machine only ever slows a step). The cgroup has the top CPU
weight, so that other work does not take the quota's CPU, and the 1-minute load average is
printed before and after.

Goals (infer and train): auto >= 0.9 of the sweep's best; >= 1.3x a 64-core node's default
(64 threads under the same quota: what a pod on such a node gets); and no slower than torch's
default here or a 16-core node's. The 16-thread case is no ratio goal: on a host with fewer
cores than threads it only time-slices the threads over its cores, while on a real 16-core node
they burn the quota in parallel and wait out the period; the 64-thread case shows the penalty
even here.

    python benchmarks/bench_cpu_quota.py [--cpus 1] [--batch 4] [--reps 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cgroups import NoCgroup, cpu_cgroup, run_in  # noqa: E402
from benchmarks.rows import record  # noqa: E402

SWEEP = ("1", "2", "4")
BIG_NODE = ("16", "64")
CONTENDERS = ("auto", "default", *SWEEP, *BIG_NODE)
STEPS = ("infer", "train")
GOAL_VS_BEST = 0.9
GOAL_VS_BIG_NODE = {"16": 1.0, "64": 1.3}
GOAL_VS_DEFAULT = 1.0


# ---------------------------------------------------------------- one contender (in the cgroup)


def contender(threads: str, batch: int, tile: int, reps: int) -> dict:
    """Time the infer and train steps with `threads` (auto, default or a number)."""
    import torch

    from components.core.cpu_budget import apply_torch_threads
    from components.core.model import build_model
    from components.train.losses import CombinedLoss
    from components.train.settings import TrainSettings

    default = torch.get_num_threads()
    if threads == "auto":
        apply_torch_threads()
    elif threads != "default":
        torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    model = build_model("Unet", "resnet18", None, 3, 2).to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, tile, tile).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch, tile, tile))
    loss_fn = CombinedLoss(TrainSettings(), binary=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def infer() -> None:
        model.eval()
        with torch.inference_mode():
            model(x)

    def train() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    times = {}
    for name, step in (("infer", infer), ("train", train)):
        step()  # warm-up: allocator, kernels
        seconds = []
        for _ in range(reps):
            start = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - start)
        times[name] = min(seconds)  # load only ever slows a step: the best is the cleanest
    return {"threads": torch.get_num_threads(), "default": default, **times}


# ---------------------------------------------------------------- the parent


def measure(args) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {c: [] for c in CONTENDERS}
    name = f"segloop-bench-{os.getpid()}"
    with cpu_cgroup(name, cpus=args.cpus) as procs:
        for n in range(args.rounds):
            order = CONTENDERS if n % 2 == 0 else tuple(reversed(CONTENDERS))
            for c in order:
                argv = [sys.executable, __file__, "--child", c, "--batch", str(args.batch)]
                argv += ["--tile", str(args.tile), "--reps", str(args.reps)]
                out = run_in(procs, argv, timeout=600)
                runs[c].append(json.loads(out.strip().splitlines()[-1]))
                print(f"  round {n + 1} {c:>7}: {_line(runs[c][-1])}", flush=True)
    return runs


def _line(run: dict) -> str:
    return f"{run['threads']:>2} threads, infer {run['infer']:.3f} s, train {run['train']:.3f} s"


def verdicts(runs: dict[str, list[dict]], cpus: float) -> None:
    def best(c: str, step: str) -> float:  # the best round: load only ever slows a run
        return min(r[step] for r in runs[c])

    auto_threads = runs["auto"][0]["threads"]
    default_threads = runs["default"][0]["threads"]
    where = f"{cpus:g}-CPU quota"
    for step in STEPS:
        auto = best("auto", step)
        top = min(SWEEP, key=lambda c: best(c, step))
        ratio = best(top, step) / auto
        print(f"{step}: auto ({auto_threads} threads) {auto:.3f} s; sweep best {top} threads")
        record(
            f"{step} under a {where}: auto ({auto_threads} threads) vs sweep best ({top})",
            f"{auto:.3f} s",
            f"{best(top, step):.3f} s",
            ratio,
            f"ratio >= {GOAL_VS_BEST}",
            ratio >= GOAL_VS_BEST,
        )
        ratio = best("default", step) / auto
        record(
            f"{step} under a {where}: auto vs torch's default here ({default_threads} threads)",
            f"{auto:.3f} s",
            f"{best('default', step):.3f} s",
            ratio,
            f"ratio >= {GOAL_VS_DEFAULT}",
            ratio >= GOAL_VS_DEFAULT,
        )
        for big in BIG_NODE:
            ratio = best(big, step) / auto
            record(
                f"{step} under a {where}: auto vs a {big}-core node's default ({big} threads)",
                f"{auto:.3f} s",
                f"{best(big, step):.3f} s",
                ratio,
                f"ratio >= {GOAL_VS_BIG_NODE[big]}",
                ratio >= GOAL_VS_BIG_NODE[big],
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpus", type=float, default=1.0, help="the cgroup's CPU quota")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(contender(args.child, args.batch, args.tile, args.reps)))
        return
    print(
        f"CPU quota {args.cpus:g} CPUs, {args.batch} x {args.tile}^2, {args.reps} reps, "
        f"{args.rounds} rounds (alternating order); machine: {os.cpu_count()} CPUs, "
        f"load average (1 min) {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    try:
        runs = measure(args)
    except NoCgroup as exc:
        print(f"not measured: {exc} (run as root on Linux)")
        record("threads under a CPU quota", "", "", None, "a CPU-limited cgroup", False)
        return
    print(f"load average (1 min) after: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    verdicts(runs, args.cpus)


if __name__ == "__main__":
    main()
