"""Inference benchmark: speed against MONAI and against the limit, memory on a full-size image.

    python benchmarks/bench_infer.py                 # CPU: speed (fp32, bf16) and peak RSS
    python benchmarks/bench_infer.py --images 4      # more images in the speed part
    python benchmarks/bench_infer.py --gpu           # CUDA: the same speed rows (fp32, AMP)
    python benchmarks/bench_infer.py --skip-memory | --skip-speed

Speed: three contenders do the same work on the same images (JPEG files, default 2 x 1024x768
on CPU, 8 x 4000x3000 on CUDA) with the same model (Unet-resnet34, random weights, no
downloads: speed does not depend on the weights' values), tile 512, overlap 0.25, Gaussian
window blending (sigma = tile / 8), the same batch of tiles and the same precision. Each is
timed from the outside, by the wall clock around the whole call:

- segloop: `run_infer` (decoding ahead in worker threads on CPU, DataLoader worker processes on
  CUDA; tiled batched engine, streaming blend, mask PNGs, manifest and metrics; `infer.coco=false`: no COCO regions, which the others do not
  compute either), `infer.window=gaussian`, `infer.amp=off|bf16`;
- MONAI: what a user writes with `monai.inferers.sliding_window_inference`: decode with PIL,
  normalize, `sliding_window_inference(roi_size=512, overlap=0.25, mode="gaussian",
  sw_batch_size=<segloop's batch>)` over softmax(model(x)) (segloop blends probabilities too),
  argmax, PNG with PIL; the model as built (eval mode), under `torch.inference_mode()` and
  `torch.autocast(bfloat16)` for bf16;
- limit: forward passes alone of the network segloop runs (BatchNorm folded, channels_last) on
  the same tiles (segloop's grid and batches), already decoded, tiled, normalized and batched
  in memory (no decode, no blending, no writing): the forward work every contender does. (Of
  the ways to run the model, BatchNorm folded + channels_last is the fastest measured here, in
  fp32 and bf16, so the limit is not set low by a slow variant.)

Rounds alternate the order (MONAI segloop limit, limit segloop MONAI, ...: segloop next to
each peer every round) in one process after an untimed warm-up (the limit's batches, MONAI on
one image, segloop on one small image: kernel choices for every batch shape at that precision
and first-call costs). Figures: median MP/s of each contender (image megapixels per second; the
limit's are the same images' megapixels); ratio segloop / MONAI (goal >= 1.0) and segloop's
share of the limit (goal >= 0.9), each the median over rounds of that round's ratio (load
from elsewhere changes between rounds more than between neighbouring runs); and where
segloop's time goes (forward passes as segloop calls them, waiting for decoded images
including the decoding workers' start and stop, the rest). On a shared machine the runs of
one contender spread; all runs are printed, with the load average.

Memory: peak RSS of `segloop infer` (run_infer, default settings) on one 9504x6336 JPEG in a
child process; reported as the child's own peak (getrusage) and the peak of the sum over its
whole process tree (main + any decoding worker processes; on CPU segloop decodes in threads;
sampled from /proc); then the same for MONAI's sliding window (same model, tile 512, batch 8,
overlap 0.25, Gaussian, the same precision: bf16 autocast where the CPU has it) in its own
child. Goals: < 3 GB, and no more than MONAI.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cgroups import top_weight_for_this_process  # noqa: E402
from benchmarks.rows import record  # noqa: E402
from components.core.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from components.core.labels import Label  # noqa: E402
from components.core.model import ModelSpec, build_from_spec  # noqa: E402
from components.core.precision import cpu_has_native_bf16, pick_amp  # noqa: E402
from components.core.predictor import SmpPredictor  # noqa: E402
from components.core.tiling import make_grid, pad_image  # noqa: E402
from components.infer.stage import run_infer  # noqa: E402
from pipelines.config import load_config  # noqa: E402

LABELS = [Label(name="background", id=0), Label(name="crop", id=1), Label(name="weed", id=2)]
GB = 1024**3


def field_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A plausible field picture (soil gradient, green blobs, noise), cheap to make at 60 MP."""
    rng = np.random.default_rng(seed)
    yy = np.linspace(60, 120, h, dtype=np.float32)[:, None]
    base = np.broadcast_to(yy, (h, w)).astype(np.uint8)
    img = np.stack([base, (base * 0.8).astype(np.uint8), (base * 0.6).astype(np.uint8)], axis=2)
    for _ in range(40):
        y, x = rng.integers(0, h - 200), rng.integers(0, w - 200)
        img[y : y + rng.integers(50, 400), x : x + rng.integers(50, 400)] = (40, 170, 50)
    noise = rng.integers(0, 12, size=(h, 1, 1), dtype=np.uint8)
    return img + noise


def make_checkpoint(folder: Path, arch: str, encoder: str, tile: int, small: bool) -> Path:
    kwargs = {"decoder_channels": [32, 16, 16, 8, 8]} if small else {}
    spec = ModelSpec(
        arch=arch,
        encoder_name=encoder,
        classes=3,
        labels=LABELS,
        tile_size=tile,
        model_kwargs=kwargs,
    )
    torch.manual_seed(0)
    save_checkpoint(build_from_spec(spec).eval(), spec, folder)
    return folder


# ---------------------------------------------------------------- memory


def _tree_rss(pid: int) -> int:
    """RSS (bytes) of a process and all its descendants, from /proc."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    stack.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def memory_child(image: str, model: str, out: str, contender: str) -> None:
    """Runs inside the child process: one full-size image through run_infer (default settings,
    amp=auto), or through MONAI's sliding window at the same precision (`contender` monai)."""
    if contender == "monai":
        net, spec = load_checkpoint(model, "cpu")
        start = time.perf_counter()
        files = sorted(Path(image).glob("*.jpg"))
        run_monai(
            net,
            spec,
            files,
            Path(out),
            torch.device("cpu"),
            pick_amp("auto", torch.device("cpu")),
            512,
            8,
        )
        seconds = time.perf_counter() - start
        pixels = sum(Image.open(f).width * Image.open(f).height for f in files)
        metrics = {"mp_per_s": pixels / 1e6 / seconds, "seconds": seconds, "tiles": "-", "ok": 1}
    else:
        cfg = load_config(extra={"infer": {"model": model, "device": "cpu", "num_workers": 2}})
        metrics = run_infer(cfg, images=image, out=out)
    print(
        json.dumps(
            {
                "self_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "mp_per_s": metrics["mp_per_s"],
                "seconds": metrics["seconds"],
                "tiles": metrics["tiles"],
                "ok": metrics["ok"],
            }
        )
    )


def bench_memory(tmp: Path, h: int, w: int) -> None:
    print(f"-- memory: one {w}x{h} image ({w * h / 1e6:.1f} MP), tiny Unet-mobilenet_v2, CPU")
    folder = tmp / "big"
    folder.mkdir()
    Image.fromarray(field_image(h, w)).save(folder / "field.jpg", quality=90)
    model = make_checkpoint(tmp / "mem-model", "Unet", "mobilenet_v2", 512, small=True)
    peaks = {}
    for contender in ("segloop", "monai"):  # segloop with its defaults (amp=auto, 2 workers)
        out = tmp / f"mem-out-{contender}"
        child = subprocess.Popen(
            [sys.executable, __file__, "--_memory-child", str(folder), str(model), str(out),
             contender],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        peak = 0
        stop = threading.Event()

        def sample(pid: int = child.pid, stop: threading.Event = stop) -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _tree_rss(pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stdout, _ = child.communicate(timeout=3600)
        stop.set()
        sampler.join()
        if child.returncode:
            print(f"   {contender}: child failed (exit {child.returncode})")
            continue
        fig = json.loads(stdout.strip().splitlines()[-1])
        peaks[contender] = peak
        print(
            f"   {contender}: peak RSS main process {fig['self_peak'] / GB:.2f} GB, whole "
            f"process tree {peak / GB:.2f} GB; {fig['tiles']} tiles, {fig['seconds']:.1f} s, "
            f"{fig['mp_per_s']:.2f} MP/s"
        )
    if "segloop" not in peaks:
        return
    peak, monai = peaks["segloop"], peaks.get("monai")
    print(
        f"   goal < 3 GB: {'met' if peak < 3 * GB else 'NOT met'}"
        + (f"; segloop / MONAI {peak / monai:.2f} (goal <= 1: "
           f"{'met' if peak <= monai else 'NOT met'})" if monai else "")
    )  # fmt: skip
    record(
        f"peak RSS, one {w}x{h} JPEG, CPU, amp=auto (process tree), vs MONAI",
        f"{peak / GB:.2f} GB",
        f"{monai / GB:.2f} GB" if monai else None,
        peak / monai if monai else None,
        "< 3 GB and <= MONAI's",
        peak < 3 * GB and (monai is None or peak <= monai),
    )


# ---------------------------------------------------------------- speed

CONTENDERS = ("monai", "segloop", "limit")  # the order of even rounds; odd rounds reverse it
GOAL_VS_MONAI = 1.0
GOAL_OF_LIMIT = 0.9
OVERLAP = 0.25
WINDOW = "gaussian"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def run_monai(
    model: torch.nn.Module,
    spec: ModelSpec,
    files: list[Path],
    out: Path,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    tile: int,
    batch: int,
) -> None:
    """What a user writes with MONAI: PIL decode, sliding window over softmax, argmax, PIL PNG."""
    from monai.inferers import sliding_window_inference

    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        with Image.open(f) as im:
            rgb = np.array(im.convert("RGB"))
        x = torch.from_numpy(rgb).to(device).permute(2, 0, 1)[None].float().div(255)
        x = (x - mean) / std
        with torch.inference_mode(), autocast(device, amp_dtype):
            probs = sliding_window_inference(
                x,
                roi_size=(tile, tile),
                sw_batch_size=batch,
                predictor=lambda t: torch.softmax(model(t), dim=1),
                overlap=OVERLAP,
                mode="gaussian",
            )
        mask = probs[0].argmax(0).to(torch.uint8).cpu().numpy()
        Image.fromarray(mask).save(out / f"{f.stem}.png")


def limit_batches(
    predictor: SmpPredictor, files: list[Path], device: torch.device, tile: int, batch: int
) -> list[torch.Tensor]:
    """The tiles segloop runs (its grid, its batches across images), decoded, normalized,
    channels_last and on the device."""
    info = predictor.info
    mean = torch.tensor(info.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(info.std, device=device).view(1, 3, 1, 1)
    tiles = []
    for f in files:
        with Image.open(f) as im:
            rgb = np.array(im.convert("RGB"))
        grid = make_grid(rgb.shape[0], rgb.shape[1], tile, OVERLAP, info.pad_divisor)
        padded = pad_image(rgb, grid)
        for i in range(grid.num_tiles):
            y, x = grid.tile(i)
            tiles.append(padded[y : y + grid.tile_h, x : x + grid.tile_w])
    out = []
    for i in range(0, len(tiles), batch):
        b = torch.from_numpy(np.stack(tiles[i : i + batch])).to(device)
        b = (b.permute(0, 3, 1, 2).float() / 255 - mean) / std
        out.append(b.contiguous(memory_format=torch.channels_last))
    return out


def run_limit(
    net: torch.nn.Module,
    batches: list[torch.Tensor],
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> None:
    with torch.inference_mode(), autocast(device, amp_dtype):
        for b in batches:
            net(b)
    sync(device)


class _Profile:
    """Where segloop's wall time goes: waiting for decoded images (patches `decoded`) and, on
    CPU, the predictor's forward passes (wraps `predict`; on CUDA they run asynchronously)."""

    def __init__(self, predictor: SmpPredictor, device: torch.device):
        self.predictor, self.device = predictor, device
        self.wait = 0.0
        self.forward = 0.0 if device.type == "cpu" else None

    def __enter__(self):
        import components.infer.stage as stage

        self.stage, self.original = stage, stage.decoded

        def timed(*args, **kwargs):  # counts the workers' start and, at the end, their stop
            it = iter(self.original(*args, **kwargs))
            while True:
                t = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    self.wait += time.perf_counter() - t
                    return
                self.wait += time.perf_counter() - t
                yield item

        stage.decoded = timed
        if self.forward is not None:
            predict = type(self.predictor).predict

            def predict_timed(batch: torch.Tensor) -> torch.Tensor:
                t = time.perf_counter()
                try:
                    return predict(self.predictor, batch)
                finally:
                    self.forward += time.perf_counter() - t

            self.predictor.predict = predict_timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc):
        self.stage.decoded = self.original
        self.predictor.__dict__.pop("predict", None)


def write_speed_images(folder: Path, n: int, h: int, w: int) -> list[Path]:
    folder.mkdir(parents=True)
    files = []
    for i in range(n):
        files.append(folder / f"im{i}.jpg")
        Image.fromarray(field_image(h, w, seed=i)).save(files[-1], quality=90)
    return files


def speed_config(device: torch.device, amp: str, tile: int, batch: int):
    """segloop's infer settings for the speed rows (built outside the timer, like the others'
    arguments)."""
    return load_config(
        extra={
            "infer": {
                "device": str(device),
                "amp": amp,
                "tile_size": tile,
                "overlap": OVERLAP,
                "window": WINDOW,
                "batch_size": batch,
                "overwrite": True,
                # COCO regions cost time in proportion to their number, which a
                # random-weight model inflates; the others write masks only too.
                "coco": False,
            }
        }
    )


@dataclass
class SpeedSetup:
    """One speed bench's inputs: images, the model as each contender holds it, the batches."""

    tmp: Path
    folder: Path
    files: list[Path]
    predictor: SmpPredictor  # what run_infer builds from --model
    model: torch.nn.Module  # the model as a MONAI user has it
    spec: ModelSpec
    batches: list  # segloop's batches, for the limit
    device: torch.device
    tile: int
    batch: int
    warm: Path  # one small image: segloop's first-call costs, untimed


def time_precision(setup: SpeedSetup, amp: str, amp_dtype, rounds: int) -> dict[str, Any]:
    """Each contender `rounds` times at one precision, in alternating order, after a warm-up;
    medians, the runs, and segloop's median wait for decoded images and forward time."""
    st, device = setup, setup.device
    cfg = speed_config(device, amp, st.tile, st.batch)
    seconds: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    profiles: list[_Profile] = []

    def run_segloop() -> None:
        profiles.append(_Profile(st.predictor, device))
        with profiles[-1]:
            run_infer(
                cfg, images=str(st.folder), out=str(st.tmp / "out-segloop"), predictor=st.predictor
            )

    runners = {
        "segloop": run_segloop,
        "monai": lambda: run_monai(
            st.model, st.spec, st.files, st.tmp / "out-monai", device, amp_dtype, st.tile, st.batch
        ),
        "limit": lambda: run_limit(st.predictor.net, st.batches, device, amp_dtype),
    }
    # Warm-up, untimed: kernel choices for every batch shape at this precision (the limit
    # runs segloop's batches; MONAI's batch per image is the same for every image) and
    # segloop's first-call costs.
    run_limit(st.predictor.net, st.batches, device, amp_dtype)
    run_monai(
        st.model, st.spec, st.files[:1], st.tmp / "out-monai", device, amp_dtype, st.tile, st.batch
    )
    run_infer(cfg, images=str(st.warm), out=str(st.tmp / "out-warm"), predictor=st.predictor)
    for r in range(rounds):
        for c in CONTENDERS if r % 2 == 0 else reversed(CONTENDERS):
            sync(device)
            start = time.perf_counter()
            runners[c]()
            sync(device)
            seconds[c].append(time.perf_counter() - start)
    forward = [p.forward for p in profiles]
    return {
        "seconds": {c: statistics.median(v) for c, v in seconds.items()},
        "runs": seconds,
        "wait": statistics.median(p.wait for p in profiles),
        "forward": statistics.median(forward) if forward[0] is not None else None,
    }


def gap_parts(f: dict[str, Any]) -> dict[str, float]:
    """segloop's time over the limit's, in named parts."""
    seg, limit, fwd, wait = f["seconds"]["segloop"], f["seconds"]["limit"], f["forward"], f["wait"]
    parts = {}
    if fwd is not None:
        parts[
            "forward passes as segloop calls them (+ softmax, one autocast per batch; else "
            "the limit's network and batches: a difference here is mostly load from elsewhere)"
        ] = fwd - limit
    parts["waiting for decoded images (decoding workers' start, decode, stop)"] = wait
    rest = seg - limit - sum(parts.values())
    parts[
        "the rest (tiling, normalizing, blending, masks and uncertainty, writing, run files"
        + (
            ""
            if fwd is not None
            else "; on CUDA forward passes run asynchronously: "
            "their excess over the limit is counted here"
        )
        + ")"
    ] = rest
    return parts


def print_speed(figures: dict[str, dict], mp: float) -> dict[str, dict[str, float]]:
    """The MP/s table, the runs and the gap parts; returns the gap parts by row."""
    print(
        f"   load average (1 min) {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; median MP/s:"
    )
    print(f"   {'precision':<10}{'segloop':>10}{'MONAI':>10}{'limit':>10}")
    for row, f in figures.items():
        m = {c: mp / f["seconds"][c] for c in CONTENDERS}
        print(f"   {row:<10}{m['segloop']:>10.3f}{m['monai']:>10.3f}{m['limit']:>10.3f}")
    for row, f in figures.items():
        runs = "; ".join(f"{c} " + " ".join(f"{s:.2f}" for s in f["runs"][c]) for c in CONTENDERS)
        print(f"   {row} runs (s): {runs}")
    gaps = {}
    for row, f in figures.items():
        seg, limit = f["seconds"]["segloop"], f["seconds"]["limit"]
        gaps[row] = parts = gap_parts(f)
        print(f"   {row}: segloop {seg:.2f} s = limit {limit:.2f} s + {seg - limit:.2f} s: "
              + "; ".join(f"{what} {sec:+.2f} s" for what, sec in parts.items()))  # fmt: skip
    return gaps


def record_speed_goals(figures, gaps, mp: float, label: str, device: torch.device) -> None:
    print("   goals")
    for row, f in figures.items():
        sec, runs = f["seconds"], f["runs"]
        vs_monai = statistics.median(
            m / s for m, s in zip(runs["monai"], runs["segloop"], strict=True)
        )
        of_limit = statistics.median(
            b / s for b, s in zip(runs["limit"], runs["segloop"], strict=True)
        )
        seg_mp, monai_mp, limit_mp = (mp / sec[c] for c in ("segloop", "monai", "limit"))
        dev = device.type.upper() if device.type == "cuda" else "CPU"
        for what, value, goal, peer in (
            ("segloop / MONAI", vs_monai, GOAL_VS_MONAI, f"MONAI {monai_mp:.3f} MP/s"),
            ("segloop share of limit", of_limit, GOAL_OF_LIMIT, f"limit {limit_mp:.3f} MP/s"),
        ):
            met = value >= goal
            print(f"     {row} {what} >= {goal}: {value:.2f} {'met' if met else 'NOT met'}")
            if not met and what.endswith("limit"):
                part, part_s = max(gaps[row].items(), key=lambda kv: kv[1])
                print(f"       the largest part of the gap: {part.split(' (')[0]}, {part_s:.2f} s")
            record(f"{dev} {row}, {label}: {what}", f"{seg_mp:.3f} MP/s", peer, value,
                   f">= {goal}", met)  # fmt: skip


def bench_speed(
    tmp: Path,
    rounds: int,
    n: int,
    h: int,
    w: int,
    tile: int,
    batch: int,
    device: torch.device,
    precisions: list[tuple[str, str, torch.dtype | None]],
) -> None:
    """`precisions`: (row name, segloop's infer.amp, the others' autocast dtype or None)."""
    folder = tmp / "speed" / "imgs"
    files = write_speed_images(folder, n, h, w)
    mp = n * h * w / 1e6
    ckpt = make_checkpoint(tmp / "speed-model", "Unet", "resnet34", tile, small=False)
    predictor = SmpPredictor.from_uri(str(ckpt), device)
    model, spec = load_checkpoint(str(ckpt), device)
    batches = limit_batches(predictor, files, device, tile, batch)
    n_tiles = sum(len(b) for b in batches)
    threads = f"{torch.get_num_threads()} torch threads" if device.type == "cpu" else ""
    print(
        f"-- speed: {n} images {w}x{h} ({mp:.1f} MP, {n_tiles} tiles), Unet-resnet34 (random "
        f"weights), tile {tile}, overlap {OVERLAP}, {WINDOW} window, batch {batch}, "
        f"{device.type}{', ' + threads if threads else ''}; {rounds} timed rounds after a "
        "warm-up, order alternating; wall clock around each whole call"
    )
    # Warm-up input for segloop's own first-call costs (imports, worker start-up code paths):
    # one small image, so that the warm-up forward passes stay cheap.
    warm = tmp / "speed" / "warm"
    warm.mkdir()
    Image.fromarray(field_image(256, 320)).save(warm / "warm.jpg", quality=90)
    setup = SpeedSetup(
        tmp, folder, files, predictor, model, spec, batches, device, tile, batch, warm
    )
    figures = {
        row: time_precision(setup, amp, amp_dtype, rounds) for row, amp, amp_dtype in precisions
    }
    gaps = print_speed(figures, mp)
    record_speed_goals(figures, gaps, mp, f"{n}x {w}x{h}, Unet-resnet34 tile {tile}", device)


def size(text: str) -> tuple[int, int]:
    """`WxH` -> (height, width)."""
    w, _, h = text.lower().partition("x")
    return int(h), int(w)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gpu", action="store_true", help="speed rows on CUDA (fp32 and amp=auto)")
    ap.add_argument(
        "--images", type=int, default=None, help="speed part: images (default 2 CPU, 8 CUDA)"
    )
    ap.add_argument(
        "--size", type=size, default=None, help="speed part: WxH (default 1024x768, 4000x3000)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per contender")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8, help="tiles per forward pass (all contenders)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--_memory-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._memory_child:
        memory_child(*args._memory_child)
        return
    with tempfile.TemporaryDirectory(prefix="segloop-bench-") as tmp:
        tmp = Path(tmp)
        if args.gpu:
            if not torch.cuda.is_available():
                sys.exit("--gpu: no CUDA device here")
            device = torch.device("cuda")
            print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
            amp = pick_amp("auto", device)
            low = {torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]
            h, w = args.size or (3000, 4000)
            bench_speed(
                tmp, args.rounds, args.images or 8, h, w, args.tile, args.batch, device,
                [("fp32", "off", None), (low, "auto", amp)],
            )  # fmt: skip
            return
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
            + (
                ", native bf16 (AMX or AVX512-BF16)"
                if cpu_has_native_bf16()
                else ", NO native bf16 (bf16 is emulated: expect it slower than fp32)"
            )
        )
        if not args.skip_speed:
            h, w = args.size or (768, 1024)
            # Other work on a shared machine would take the CPU from the contenders' threads.
            with top_weight_for_this_process(f"segloop-bench-infer-{os.getpid()}") as weight:
                print(f"CPU: {weight}")
                bench_speed(
                    tmp, args.rounds, args.images or 2, h, w, args.tile, args.batch,
                    torch.device("cpu"), [("fp32", "off", None), ("bf16", "bf16", torch.bfloat16)],
                )  # fmt: skip
        if not args.skip_memory:
            bench_memory(tmp, 6336, 9504)


if __name__ == "__main__":
    main()
