"""Training throughput: `segloop train`'s loop against a naive loop and against the limit.

Three contenders train the same model from the same initial weights on the same tiles, with the
same augmentation, loss, optimizer (AdamW), batch size and number of steps, at one precision:

- naive: what a first training script does: normalize each tile to float in `__getitem__`,
  contiguous NCHW, `num_workers=0`, `optimizer.zero_grad()`, the loss read every step;
- segloop: the loop `segloop train` runs: `TileDataset` (`train.cache_images=true`), uint8
  batches normalized on the device, channels_last, `pick_workers` DataLoader workers,
  `engine.train_epoch`;
- limit: forward + backward + optimizer step alone, on batches already augmented, normalized,
  channels_last and on the device (the same batches the segloop loader yields), no data loading.

Each precision is its own row: fp32 (autocast off) and bf16 (every contender under the same
autocast dtype; on CUDA `amp=auto`'s dtype, bf16 or fp16 with loss scaling). Decode rule: every
contender decodes all tiles before its timer starts (segloop's decode cache is filled when the
dataset is built, the naive dataset decodes in `__init__`), so decoding is counted on no side.
Each run starts from fresh weights, does `--warmup` untimed steps through its own loader, then
is timed from the moment the first batch is requested until the last optimizer step is done
(CUDA synchronized). Rounds alternate the order (naive segloop limit, limit segloop naive, ...)
in one process; each contender reports its median. Every contender's timed steps see the same
shuffle and augmentation draws (with segloop's DataLoader workers on CUDA, the same shuffle).
Goals per precision: segloop/naive >= 1.0 and segloop/limit >= 0.9.

`--gpu`: the same rows on CUDA, plus the mean GPU utilization of each contender (nvidia-smi or
torch.cuda.utilization).

    python benchmarks/bench_train.py [--tile 128] [--batch 8] [--steps 24] [--rounds 6] [--gpu] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rows import record  # noqa: E402
from components.core.model import build_model  # noqa: E402
from components.core.precision import cpu_has_native_bf16, pick_amp  # noqa: E402
from components.preprocess.stage import run_preprocess  # noqa: E402
from components.train.data import Normalizer, TileDataset, build_transforms  # noqa: E402
from components.train.engine import Runtime, pick_workers, train_epoch  # noqa: E402
from components.train.losses import CombinedLoss  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.demo.toydata import write_toy_dataset  # noqa: E402

CONTENDERS = ("naive", "segloop", "limit")
GOAL_VS_NAIVE = 1.0
GOAL_VS_LIMIT = 0.9
SEED = 0


class NaiveDataset(Dataset):
    """Tiles decoded once in `__init__` (the decode rule), normalized to float per item."""

    def __init__(self, tiles: TileDataset, mean, std, transform):
        from torchvision import tv_tensors

        self.tv = tv_tensors
        self.items = [
            (
                torch.from_numpy(np.array(Image.open(img).convert("RGB"))).permute(2, 0, 1),
                torch.from_numpy(np.array(Image.open(mask))),
            )
            for img, mask in zip(tiles.images, tiles.masks, strict=True)
        ]
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        image, mask = self.items[i]
        image, mask = self.transform(self.tv.Image(image), self.tv.Mask(mask))
        x = (image.as_subclass(torch.Tensor).float() / 255 - self.mean) / self.std
        return x, mask.as_subclass(torch.Tensor).long()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_steps(model, loader, optimizer, loss_fn, device, amp_dtype, scaler, max_steps):
    model.train()
    running = 0.0
    for step, (x, y) in enumerate(loader):
        if step >= max_steps:
            break
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            logits = model(x)
        loss = loss_fn(logits, y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        running += loss.item()
    sync(device)
    return running


def limit_steps(model, batches, optimizer, loss_fn, rt: Runtime) -> None:
    model.train()
    optimizer.zero_grad(set_to_none=True)
    for x, y in batches:
        with rt.autocast():
            logits = model(x)
        rt.scaler.scale(loss_fn(logits, y)).backward()
        rt.scaler.step(optimizer)
        rt.scaler.update()
        optimizer.zero_grad(set_to_none=True)
    sync(rt.device)


class GpuSampler:
    """Mean GPU utilization (%) while the block runs, from nvidia-smi or torch.cuda."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _sample(self) -> float | None:
        if shutil.which("nvidia-smi"):
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                capture_output=True, text=True, timeout=5,
            )  # fmt: skip
            if out.returncode == 0 and out.stdout.strip():
                return float(out.stdout.split()[0])
        try:
            return float(torch.cuda.utilization())
        except Exception:  # no pynvml
            return None

    def _run(self):
        while not self._stop.wait(0.2):
            value = self._sample()
            if value is not None:
                self.samples.append(value)

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join()


def prepare(root: Path, tile: int, n: int) -> Path:
    data = write_toy_dataset(root / "ds", n=n, seed=0, sizes=(2 * tile, 2 * tile))
    cfg = load_config(None, [f"preprocess.tile_size={tile}", "preprocess.val_fraction=0",
                             "preprocess.test_fraction=0", f"stack.dir={root / 'stack'}"])  # fmt: skip
    run_preprocess(cfg, inputs=[str(data)], out=str(root / "pre"))
    return root / "pre"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=24, help="timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before each run")
    ap.add_argument("--rounds", type=int, default=6, help="runs of each contender per precision")
    ap.add_argument(
        "--workers", type=int, default=None, help="segloop loop workers (default: train's)"
    )
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    return ap.parse_args()


class Contenders:
    """The three training loops on the same tiles, model start and batches: `naive` (a plain
    PyTorch loop), `segloop` (train_epoch) and `limit` (segloop's steps on batches in memory).
    Each `run_<name>(amp_dtype)` returns images per second over the timed steps."""

    def __init__(self, args, s, pre: Path, device: torch.device, workers: int, channels_last):
        self.args, self.s, self.device = args, s, device
        self.workers, self.channels_last = workers, channels_last
        self.stats = json.loads((pre / "stats.json").read_text())
        self.classes = len(json.loads((pre / "labels.json").read_text())["labels"])
        torch.manual_seed(SEED)
        self.init = build_model(s.arch, s.encoder_name, None, 3, self.classes).state_dict()
        transform = build_transforms(s.augment, args.tile, train=True)
        # Decode rule: all tiles decoded here, before any timer (segloop's cache, naive's list).
        self.cached = TileDataset(pre, "train", transform, cache=True)
        self.naive_ds = NaiveDataset(self.cached, self.stats["mean"], self.stats["std"], transform)
        assert len(self.cached) // args.batch >= args.steps, "too few tiles for one epoch of steps"
        self.loss_fn = CombinedLoss(s, binary=False)

    def fresh(self, cl: bool):
        model = build_model(self.s.arch, self.s.encoder_name, None, 3, self.classes)
        model.load_state_dict(self.init)
        model.to(self.device)
        if cl:
            model.to(memory_format=torch.channels_last)
        return model, torch.optim.AdamW(model.parameters(), lr=self.s.lr)

    def runtime(self, amp_dtype) -> Runtime:
        norm = Normalizer(self.stats["mean"], self.stats["std"]).to(self.device)
        return Runtime(self.device, amp_dtype, self.channels_last, False, self.classes, norm)

    def segloop_loader(self, n_workers: int) -> DataLoader:
        # As components.train.stage._loader builds it for one process.
        return DataLoader(self.cached, batch_size=self.args.batch, shuffle=True, drop_last=True,
                          num_workers=n_workers, persistent_workers=n_workers > 0,
                          pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(SEED))  # fmt: skip

    @staticmethod
    def reseed(loader: DataLoader) -> None:
        """The same shuffle and augmentation draws for every contender's timed steps."""
        torch.manual_seed(SEED)
        loader.generator.manual_seed(SEED)

    def timed(self, fn) -> float:
        sync(self.device)
        start = time.perf_counter()
        fn()  # ends after the last optimizer step, CUDA synchronized
        return self.args.steps * self.args.batch / (time.perf_counter() - start)

    def run_segloop(self, amp_dtype) -> float:
        model, opt = self.fresh(self.channels_last)
        rt = self.runtime(amp_dtype)
        loader = self.segloop_loader(self.workers)
        train_epoch(model, loader, opt, self.loss_fn, rt, max_steps=self.args.warmup)
        self.reseed(loader)
        steps = self.args.steps
        return self.timed(
            lambda: train_epoch(model, loader, opt, self.loss_fn, rt, max_steps=steps)
        )

    def run_naive(self, amp_dtype) -> float:
        model, opt = self.fresh(False)
        scaler = torch.amp.GradScaler(self.device.type, enabled=amp_dtype == torch.float16)
        loader = DataLoader(self.naive_ds, batch_size=self.args.batch, shuffle=True,
                            drop_last=True, num_workers=0,
                            generator=torch.Generator().manual_seed(SEED))  # fmt: skip
        step_args = (model, loader, opt, self.loss_fn, self.device, amp_dtype, scaler)
        naive_steps(*step_args, self.args.warmup)
        self.reseed(loader)
        return self.timed(lambda: naive_steps(*step_args, self.args.steps))

    def run_limit(self, amp_dtype) -> float:
        model, opt = self.fresh(self.channels_last)
        rt = self.runtime(amp_dtype)
        loader = self.segloop_loader(0)
        self.reseed(loader)  # the batches segloop's timed steps see
        batches = [rt.inputs(x, y) for x, y in loader][: self.args.steps]
        limit_steps(model, batches[: self.args.warmup], opt, self.loss_fn, rt)
        return self.timed(lambda: limit_steps(model, batches, opt, self.loss_fn, rt))


def measure(contenders: Contenders, rows: list, rounds: int, gpu: bool) -> dict[str, dict]:
    """Per precision: each contender `rounds` times, in alternating order; medians and ratios."""
    runners = {c: getattr(contenders, f"run_{c}") for c in CONTENDERS}
    figures: dict[str, dict] = {}
    for name, amp_dtype in rows:
        rates: dict[str, list[float]] = {c: [] for c in CONTENDERS}
        util: dict[str, list[float]] = {c: [] for c in CONTENDERS}
        for r in range(rounds):
            for c in CONTENDERS if r % 2 == 0 else reversed(CONTENDERS):
                with GpuSampler(gpu) as g:
                    rates[c].append(runners[c](amp_dtype))
                util[c] += g.samples
        med = {c: statistics.median(v) for c, v in rates.items()}
        figures[name] = {
            "median_images_per_s": {c: round(v, 2) for c, v in med.items()},
            "segloop_vs_naive": round(med["segloop"] / med["naive"], 3),
            "segloop_vs_limit": round(med["segloop"] / med["limit"], 3),
            "rounds": {c: [round(v, 2) for v in vs] for c, vs in rates.items()},
        }
        if gpu:
            figures[name]["gpu_utilization_percent"] = {
                c: round(statistics.mean(v), 1) if v else None for c, v in util.items()
            }
    return figures


def print_setup(args, s, dev: str, workers: int, channels_last) -> None:
    print(
        f"bench_train on {dev} ({torch.get_num_threads()} torch threads, torch {torch.__version__})"
        f": {s.arch}/{args.encoder}, {args.tile} px tiles, batch {args.batch}, {args.steps} timed "
        f"steps ({args.steps * args.batch} images) per run after {args.warmup} warm-up steps, "
        f"{args.rounds} runs per contender and precision, segloop workers {workers}, "
        f"channels_last {channels_last}"
    )
    print(
        "decode rule: every contender decodes all tiles before its timer starts (segloop: "
        "train.cache_images=true, naive: decoded in __init__, limit: batches in memory); "
        "timed: first batch requested -> last optimizer step"
    )
    if not args.gpu:
        native = cpu_has_native_bf16()
        print(
            "bf16: this CPU has native bf16 (AMX or AVX512-BF16); amp=auto picks bf16"
            if native
            else "bf16: this CPU has NO native bf16 (emulated, expect it slower than fp32); "
            "amp=auto picks fp32 here, the bf16 row is run anyway"
        )
    print("order per round alternates: naive segloop limit / limit segloop naive / ...")
    print()


def print_figures(figures: dict[str, dict], low: str, gpu: bool) -> None:
    header = f"{'precision':<10}{'naive':>10}{'segloop':>10}{'limit':>10}{'vs naive':>10}{'of limit':>10}"
    print("median images/s")
    print(header)
    for name, f in figures.items():
        m = f["median_images_per_s"]
        print(
            f"{name:<10}{m['naive']:>10.2f}{m['segloop']:>10.2f}{m['limit']:>10.2f}"
            f"{f['segloop_vs_naive']:>9.2f}x{f['segloop_vs_limit']:>10.2f}"
        )
    print()
    for name, f in figures.items():
        print(f"{name} runs (images/s): " + "; ".join(f"{c} {v}" for c, v in f["rounds"].items()))
        if gpu:
            print(f"{name} GPU utilization %: {f['gpu_utilization_percent']}")
    speed = (
        figures[low]["median_images_per_s"]["segloop"]
        / figures["fp32"]["median_images_per_s"]["segloop"]
    )
    print(f"segloop {low} vs fp32: {speed:.2f}x")
    print()


def record_goals(figures: dict[str, dict], args, s, dev: str) -> None:
    print("goals")
    for name, f in figures.items():
        for key, goal, what in (
            ("segloop_vs_naive", GOAL_VS_NAIVE, "segloop / naive"),
            ("segloop_vs_limit", GOAL_VS_LIMIT, "segloop / limit"),
        ):
            verdict = "met" if f[key] >= goal else "NOT met"
            print(f"  {name} {what} >= {goal}: {f[key]:.2f} {verdict}")
            m = f["median_images_per_s"]
            peer = "naive" if key == "segloop_vs_naive" else "limit"
            record(
                f"{'CPU' if dev == 'cpu' else 'CUDA'} {name}, {s.arch}/{args.encoder} "
                f"{args.tile} px, batch {args.batch}: {what}",
                f"{m['segloop']:.2f} images/s",
                f"{peer} {m[peer]:.2f} images/s",
                f[key],
                f">= {goal}",
                f[key] >= goal,
            )


def main() -> None:
    args = parse_args()
    cfg = load_config(
        None, [f"train.encoder_name={args.encoder}", f"train.batch_size={args.batch}"]
    )
    s = cfg.train
    channels_last = s.channels_last if s.channels_last is not None else True
    if args.gpu and not torch.cuda.is_available():
        sys.exit("--gpu: no CUDA device here")
    device = torch.device("cuda" if args.gpu else "cpu")
    workers = pick_workers(args.workers, device)
    # One epoch holds every timed step: each toy image gives 4 tiles.
    n_images = math.ceil(args.steps * args.batch / 4)
    rows = [("fp32", None)]
    if args.gpu:
        amp = pick_amp("auto", device)
        rows.append(({torch.bfloat16: "bf16", torch.float16: "fp16"}[amp], amp))
    else:
        rows.append(("bf16", pick_amp("bf16", device)))

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        pre = prepare(Path(tmp), args.tile, n_images)
        contenders = Contenders(args, s, pre, device, workers, channels_last)
        figures = measure(contenders, rows, args.rounds, args.gpu)

    dev = torch.cuda.get_device_name(0) if args.gpu else "cpu"
    print_setup(args, s, dev, workers, channels_last)
    print_figures(figures, rows[1][0], args.gpu)
    record_goals(figures, args, s, dev)
    if args.json:
        print(json.dumps({"device": dev, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
