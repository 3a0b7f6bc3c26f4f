"""Training throughput: `segloop train`'s loop against a naive loop, in one process.

CPU (default): images/s of the loop `segloop train` runs (tiles decoded once and cached, uint8
batches normalized in the loop, channels_last, DataLoader workers) against a naive loop (PNG
decoded and normalized in `__getitem__` every time, fp32, contiguous NCHW, num_workers=0), with
the same model, initial weights, augmentation, loss, optimizer and data. Rounds alternate
(naive, segloop, naive, ...) and each side reports its best round, so load from other
processes hurts both alike. Goal: ratio >= 1.5.

`--gpu`: on CUDA, the segloop loop with AMP (bf16/fp16) against fp32, with GPU utilization
sampled from nvidia-smi (or torch.cuda.utilization) while each runs.

    python benchmarks/bench_train.py [--tile 128] [--images 24] [--steps 12] [--rounds 2] [--gpu]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.core.model import build_model  # noqa: E402
from components.core.precision import pick_amp  # noqa: E402
from components.preprocess.stage import run_preprocess  # noqa: E402
from components.train.data import Normalizer, TileDataset, build_transforms  # noqa: E402
from components.train.engine import Runtime, pick_workers, train_epoch  # noqa: E402
from components.train.losses import CombinedLoss  # noqa: E402
from components.train.toydata import write_toy_dataset  # noqa: E402
from pipelines.config import load_config  # noqa: E402


class NaiveDataset(Dataset):
    """What a first training script does: decode and normalize every tile every time."""

    def __init__(self, tiles: TileDataset, mean, std, transform):
        self.images, self.masks = tiles.images, tiles.masks
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from torchvision import tv_tensors

        image = torch.from_numpy(np.array(Image.open(self.images[i]).convert("RGB"))).permute(
            2, 0, 1
        )
        mask = torch.from_numpy(np.array(Image.open(self.masks[i])))
        image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        x = (image.as_subclass(torch.Tensor).float() / 255 - self.mean) / self.std
        return x, mask.as_subclass(torch.Tensor).long()


def naive_epoch(model, loader, optimizer, loss_fn, device, max_steps):
    model.train()
    images, start = 0, time.perf_counter()
    for step, (x, y) in enumerate(loader):
        if step >= max_steps:
            break
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        images += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


class GpuSampler:
    """Mean GPU utilization (%) while the block runs, from nvidia-smi or torch.cuda."""

    def __init__(self):
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
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def mean(self):
        return round(statistics.mean(self.samples), 1) if self.samples else None


def prepare(root: Path, tile: int, n: int) -> Path:
    data = write_toy_dataset(root / "ds", n=n, seed=0, sizes=(2 * tile, 2 * tile))
    cfg = load_config(None, [f"preprocess.tile_size={tile}", "preprocess.val_fraction=0",
                             "preprocess.test_fraction=0", f"stack.dir={root / 'stack'}"])  # fmt: skip
    run_preprocess(cfg, inputs=[str(data)], out=str(root / "pre"))
    return root / "pre"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--images", type=int, default=24, help="toy images (each gives 4 tiles)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--workers", type=int, default=None, help="segloop loop workers (default: train's)"
    )
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--gpu", action="store_true")
    args = ap.parse_args()

    cfg = load_config(
        None, [f"train.encoder_name={args.encoder}", f"train.batch_size={args.batch}"]
    )
    s = cfg.train
    device = torch.device("cuda" if args.gpu else "cpu")
    if args.gpu and not torch.cuda.is_available():
        sys.exit("--gpu: no CUDA device here")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        pre = prepare(Path(tmp), args.tile, args.images)
        stats = json.loads((pre / "stats.json").read_text())
        torch.manual_seed(0)
        init = build_model(s.arch, s.encoder_name, None, 3, 3).state_dict()
        transform = build_transforms(s.augment, args.tile, train=True)
        cached = TileDataset(pre, "train", transform, cache=True)
        loss_fn = CombinedLoss(s, binary=False)

        def fresh(channels_last: bool):
            model = build_model(s.arch, s.encoder_name, None, 3, 3)
            model.load_state_dict(init)
            model.to(device)
            if channels_last:
                model.to(memory_format=torch.channels_last)
            return model, torch.optim.AdamW(model.parameters(), lr=s.lr)

        def segloop_round(amp_mode: str) -> float:
            model, opt = fresh(True)
            rt = Runtime(device, pick_amp(amp_mode, device), True, False, 3,
                         Normalizer(stats["mean"], stats["std"]).to(device))  # fmt: skip
            workers = pick_workers(args.workers, device)
            loader = DataLoader(cached, batch_size=args.batch, shuffle=True, drop_last=True,
                                num_workers=workers, persistent_workers=workers > 0,
                                pin_memory=device.type == "cuda")  # fmt: skip
            train_epoch(model, loader, opt, loss_fn, rt, max_steps=2)  # warm-up
            return train_epoch(model, loader, opt, loss_fn, rt, max_steps=args.steps)[
                "images_per_s"
            ]

        def naive_round() -> float:
            model, opt = fresh(False)
            ds = NaiveDataset(cached, stats["mean"], stats["std"], transform)
            loader = DataLoader(
                ds, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=0
            )
            naive_epoch(model, loader, opt, loss_fn, device, 2)  # warm-up
            return naive_epoch(model, loader, opt, loss_fn, device, args.steps)

        result: dict = {
            "device": torch.cuda.get_device_name(0) if args.gpu else "cpu",
            "torch_threads": torch.get_num_threads(),
            "tile": args.tile,
            "batch": args.batch,
            "encoder": args.encoder,
            "train_tiles": len(cached),
            "segloop_workers": pick_workers(args.workers, device),
        }
        if not args.gpu:
            naive, ours = [], []
            for _ in range(args.rounds):
                naive.append(naive_round())
                ours.append(segloop_round("auto"))
            result.update(
                naive_images_per_s=round(max(naive), 2),
                segloop_images_per_s=round(max(ours), 2),
                ratio=round(max(ours) / max(naive), 2),
                rounds={
                    "naive": [round(v, 2) for v in naive],
                    "segloop": [round(v, 2) for v in ours],
                },
                goal=">= 1.5",
            )
        else:
            fp32, amp = [], []
            util = {}
            for _ in range(args.rounds):
                with GpuSampler() as g32:
                    fp32.append(segloop_round("off"))
                with GpuSampler() as gamp:
                    amp.append(segloop_round("auto"))
                util = {"fp32": g32.mean, "amp": gamp.mean}
            result.update(
                fp32_images_per_s=round(max(fp32), 2),
                amp_images_per_s=round(max(amp), 2),
                amp_dtype=str(pick_amp("auto", device)).replace("torch.", ""),
                ratio_amp_vs_fp32=round(max(amp) / max(fp32), 2),
                gpu_utilization_percent=util,
                naive_images_per_s=round(naive_round(), 2),
            )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
