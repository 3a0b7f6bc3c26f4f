"""`run_train`: preprocessed tiles -> a trained checkpoint, tracked in MLflow.

Output layout (folder or s3:// prefix):

    best/model.pt, best/model.json    the checkpoint with the best validation mean IoU
    last/model.pt, last/model.json    the latest epoch's weights
    last/state.pt                     optimizer, scheduler, scaler, epoch, best score, MLflow
                                      run id: what `--resume` needs to continue the epoch count
    mlflow.json                       tracking URI, experiment, run id, logged model URI
    manifest.jsonl                    one line per epoch (key `epoch`): losses, IoU, Dice, lr
    metrics.json, cfg.yaml

Under `torchrun` (WORLD_SIZE > 1), or N processes started by `components.train.launch`, every
rank trains on its own shard (DistributedDataParallel, NCCL on CUDA, Gloo on CPU); validation
is sharded without padding and its confusion matrix all-reduced, so every rank sees the same
score and stops at the same epoch; rank 0 alone writes files and talks to MLflow. With
SEGLOOP_TRAIN_SHARD_LOG=<folder>, each rank appends the training tile names it is given per
epoch to <folder>/rank<N>.jsonl (a debugging aid; the DDP tests read it).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from components.core import outputs, storage, tracking
from components.core.artifacts import OK, Manifest, write_metrics
from components.core.checkpoint import load_checkpoint, log_checkpoint_to_mlflow, save_checkpoint
from components.core.config import save_resolved
from components.core.cpu_budget import apply_torch_threads
from components.core.device import pick_device
from components.core.errors import SegloopError
from components.core.labels import LabelSet
from components.core.metrics import flat_metrics, scores
from components.core.model import ModelSpec, build_model
from components.core.precision import pick_amp
from components.train.data import Normalizer, TileDataset, build_transforms
from components.train.engine import (
    Runtime,
    pick_workers,
    seed_everything,
    train_epoch,
    validate,
)
from components.train.losses import CombinedLoss, class_weights
from components.train.settings import TrainConfig, TrainSettings
from components.train.warm_start import warm_start

log = logging.getLogger(__name__)
STATE = "state.pt"
SHARD_LOG_ENV = "SEGLOOP_TRAIN_SHARD_LOG"


def read_prepared(root: Path) -> tuple[dict, dict, LabelSet]:
    """split.json, stats.json and labels.json of a preprocess output."""
    for name in ("split.json", "stats.json", "labels.json"):
        if not (root / name).is_file():
            raise SegloopError(
                f"{root} has no {name}: train needs the output folder of `segloop preprocess`"
            )
    split = storage.read_json(root / "split.json")
    stats = storage.read_json(root / "stats.json")
    return split, stats, LabelSet.load(root / "labels.json")


def make_spec(cfg: TrainConfig, split: dict, stats: dict, labels: LabelSet) -> ModelSpec:
    s = cfg.train
    if s.binary and labels.num_classes != 2:
        raise SegloopError(
            f"train.binary=true needs exactly 2 labels, the data has {labels.num_classes} "
            f"({', '.join(labels.names)}); set train.binary=false"
        )
    try:
        return ModelSpec(
            arch=s.arch,
            encoder_name=s.encoder_name,
            encoder_weights=s.encoder_weights,
            classes=1 if s.binary else labels.num_classes,
            model_kwargs=s.model_kwargs,
            labels=labels.labels,
            mean=tuple(stats["mean"]),
            std=tuple(stats["std"]),
            tile_size=int(stats["tile_size"]),
            pad_divisor=s.pad_divisor,
            data_hash=split.get("data_hash"),
        )
    except ValidationError as exc:
        problems = "; ".join(e["msg"] for e in exc.errors())
        raise SegloopError(
            f"cannot describe the model: {problems} (preprocess.tile_size must be a multiple "
            f"of train.pad_divisor={s.pad_divisor})"
        ) from None


def _find_state(resume: str, into: Path) -> Path:
    """A local folder holding last/ (model.pt, model.json, state.pt) of a previous run."""
    for folder in (storage.join(resume, "last"), resume):
        if storage.exists(storage.join(folder, STATE)):
            if not storage.is_s3(folder):
                return storage.local_path(folder)
            storage.download_dir(folder, into)
            return into
    raise SegloopError(
        f"--resume {resume}: no last/{STATE} there; point it at a previous train output folder"
    )


class _ShardSampler(Sampler[int]):
    """This rank's share of a dataset in order, without DistributedSampler's padding: every
    validation tile is counted exactly once in the all-reduced confusion matrix."""

    def __init__(self, size: int, rank: int, world: int):
        self.indices = list(range(rank, size, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _loader(ds, batch_size, shuffle, workers, device, seed, distributed, drop_last):
    sampler = None
    if distributed and shuffle:
        # drop_last: no padding, so the ranks' shards are disjoint (at most world-1 tiles,
        # different ones each epoch, sit an epoch out).
        sampler = DistributedSampler(ds, shuffle=True, seed=seed, drop_last=True)
    elif distributed:
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        sampler = _ShardSampler(len(ds), rank, world)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        drop_last=drop_last and len(ds) > batch_size,
        generator=gen,
    )


def _init_distributed(device: str = "auto") -> tuple[int, int, int | None]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        backend = "nccl" if cuda else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend=backend)
    return torch.distributed.get_rank(), world, local_rank


# ---------------------------------------------------------------- state between the steps


@dataclass(frozen=True)
class _Context:
    """This process: its rank in a torchrun job (world 1 without one), device, precision."""

    rank: int
    world: int
    local_rank: int | None
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and talks to MLflow."""
        return self.rank == 0


@dataclass
class _Data:
    """The preprocess output as training sees it."""

    split: dict
    labels: LabelSet
    spec: ModelSpec
    train_ds: TileDataset
    val_ds: TileDataset
    train_loader: DataLoader
    val_loader: DataLoader | None  # None: no validation tiles (no early stop, last = best)


@dataclass
class _Trainer:
    """What one optimization step needs."""

    model: torch.nn.Module  # wrapped in DistributedDataParallel under torchrun
    net: torch.nn.Module  # the bare model: what checkpoints hold
    optimizer: torch.optim.Optimizer
    scheduler: Any  # CosineAnnealingLR, ReduceLROnPlateau or None
    rt: Runtime
    loss_fn: CombinedLoss


@dataclass
class _Progress:
    """The epoch count and early-stop state; saved in last/state.pt so a resume continues it."""

    start_epoch: int = 1
    best_miou: float = -1.0
    stale: int = 0  # epochs since the last improvement
    epochs_run: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def observe(self, miou: float) -> bool:
        """Count an epoch's val mean IoU; True when it is a new best."""
        improved = miou > self.best_miou + 1e-6
        if improved:
            self.best_miou, self.stale = miou, 0
        else:
            self.stale += 1
        return improved


@dataclass
class _Tracker:
    """Rank 0's outputs: the output folder, the MLflow run and the per-epoch manifest."""

    root: Path
    mlflow: Any
    run: Any
    manifest: Manifest


# ---------------------------------------------------------------- the steps


def run_train(
    cfg: TrainConfig, *, data: str, out: str, resume: str | None = None
) -> dict[str, Any]:
    """Train on a preprocess output; returns metrics (best val mean IoU, run id, model URI)."""
    s = cfg.train
    resume = resume or s.resume
    ctx = _setup_context(s)

    with ExitStack() as stack:
        data_root = stack.enter_context(storage.local_input(data))
        # Rank 0 alone writes: the other ranks have no output folder (root None).
        made_by = {"data": data, "resume": resume, **s.model_dump()}
        output = outputs.open_output(out, "train", made_by, resume=False)
        root = stack.enter_context(output) if ctx.main else None
        d = _load_splits(cfg, data, data_root, ctx)
        spec = d.spec
        model = build_model(
            spec.arch, spec.encoder_name, s.encoder_weights, 3, spec.classes, **spec.model_kwargs
        )
        state = _resume(resume, out, model, spec, root, ctx) if resume else {}
        # A resumed run continues its own weights; a new one may fine-tune an earlier model.
        init = None if resume else warm_start(cfg, model, spec)
        trainer = _build_trainer(s, model, d, ctx)
        progress = _restore_progress(s, state, trainer)
        tracker = _start_tracking(cfg, data, out, d, ctx, state, root, stack) if ctx.main else None
        if tracker and init:
            tracker.mlflow.set_tag("segloop.init_from", init)

        start = time.monotonic()
        _fit(s, d, trainer, progress, tracker, ctx)
        if ctx.distributed:
            torch.distributed.barrier()  # every rank done before rank 0 wraps up
        if not ctx.main:
            torch.distributed.destroy_process_group()
            return {"rank": ctx.rank}
        seconds = time.monotonic() - start

        model_uri = _save_best_model(s, trainer.net, spec, tracker)
        metrics = _write_outputs(cfg, tracker, d.split, progress, seconds, model_uri)
    if ctx.distributed:
        torch.distributed.destroy_process_group()
    return metrics


def _setup_context(s: TrainSettings) -> _Context:
    """Join the torchrun job (if any), seed, and pick the device and AMP dtype."""
    rank, world, local_rank = _init_distributed(s.device)
    apply_torch_threads()  # this rank's share of the CPU quota, not the node's cores
    # A different seed per rank: each rank draws its own augmentations.
    seed_everything(s.seed + rank)
    device = pick_device(s.device, "train.device", local_rank)
    return _Context(
        rank=rank,
        world=world,
        local_rank=local_rank,
        device=device,
        amp_dtype=pick_amp(s.amp, device),
        channels_last=s.channels_last if s.channels_last is not None else True,
    )


def _load_splits(cfg: TrainConfig, data: str, data_root: Path, ctx: _Context) -> _Data:
    """Read split/stats/labels, describe the model, and build the train and val loaders."""
    s = cfg.train
    split, stats, labels = read_prepared(data_root)
    spec = make_spec(cfg, split, stats, labels)
    train_ds = TileDataset(
        data_root, "train", build_transforms(s.augment, spec.tile_size, True), s.cache_images
    )
    val_ds = TileDataset(data_root, "val", None, s.cache_images)
    if not len(train_ds):
        raise SegloopError(f"{data}: no training tiles under train/images")
    # batch_size is the global batch: each rank takes its share.
    per_rank_batch = max(1, s.batch_size // ctx.world)
    train_loader = _loader(
        train_ds,
        per_rank_batch,
        True,
        pick_workers(s.workers, ctx.device),
        ctx.device,
        s.seed,
        ctx.distributed,
        True,
    )
    val_loader = (
        _loader(val_ds, per_rank_batch, False, 0, ctx.device, s.seed, ctx.distributed, False)
        if len(val_ds)
        else None
    )
    if val_loader is None:
        log.warning("train: no validation tiles; the last epoch is kept as best, no early stop")
    return _Data(split, labels, spec, train_ds, val_ds, train_loader, val_loader)


def _resume(
    resume: str,
    out: str,
    model: torch.nn.Module,
    spec: ModelSpec,
    root: Path | None,
    ctx: _Context,
) -> dict[str, Any]:
    """Load the previous run's last weights into `model`; return its state.pt."""
    with tempfile.TemporaryDirectory(prefix="segloop-train-") as tmp:
        folder = _find_state(resume, Path(tmp))
        resumed, old_spec = load_checkpoint(folder, "cpu")
        if old_spec.classes != spec.classes or old_spec.arch != spec.arch:
            raise SegloopError(
                f"--resume {resume}: that run trained {old_spec.arch}/{old_spec.classes} "
                f"outputs, this config asks for {spec.arch}/{spec.classes}"
            )
        model.load_state_dict(resumed.state_dict())
        state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
    if ctx.main and resume.rstrip("/") != str(out).rstrip("/"):
        _copy_previous_best(resume, root)
    return state


def _copy_previous_best(resume: str, root: Path) -> None:
    """Resuming into a new folder: the restored best score must come with its weights, so
    that best/ is right even when no later epoch beats it."""
    best = storage.join(resume, "best")
    if storage.exists(storage.join(best, "model.pt")):
        storage.download_dir(best, root / "best")


def _build_trainer(s: TrainSettings, model: torch.nn.Module, d: _Data, ctx: _Context) -> _Trainer:
    """Place the model on the device (DDP under torchrun), then optimizer, scheduler, loss."""
    model.to(ctx.device)
    if ctx.channels_last:
        model.to(memory_format=torch.channels_last)
    if ctx.distributed:
        _freeze_unused(model, d.spec, ctx.device)
        ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    net = model.module if ctx.distributed else model
    optimizer, scheduler = _build_optimizer(s, model)
    rt = Runtime(
        ctx.device,
        ctx.amp_dtype,
        ctx.channels_last,
        binary=d.spec.binary,
        num_classes=d.labels.num_classes,
        normalizer=Normalizer(d.spec.mean, d.spec.std).to(ctx.device),
    )
    weights = class_weights(
        s, d.labels.num_classes, lambda: d.train_ds.pixels_per_class(d.labels.num_classes)
    )
    if weights is not None:
        log.info("train: cross-entropy class weights %s", [round(float(w), 3) for w in weights])
    loss = CombinedLoss(s, d.spec.binary, None if weights is None else weights.to(ctx.device))
    return _Trainer(model, net, optimizer, scheduler, rt, loss)


def _freeze_unused(model: torch.nn.Module, spec: ModelSpec, device: torch.device) -> None:
    """Freeze the parameters the forward pass never reaches (found by one backward pass).

    DDP stops with "parameters that were not used in producing loss" when a parameter gets no
    gradient: smp keeps the encoder stages that `encoder_depth` < 5 cuts off. They never learn
    anyway (no gradient, so AdamW skips them), so freezing them changes nothing in training,
    keeps every checkpoint key, and spares DDP `find_unused_parameters`' graph walk per step.
    """
    was_training = model.training
    model.eval()  # no BatchNorm running-stat update from the probe
    probe = torch.zeros(1, 3, spec.tile_size, spec.tile_size, device=device)
    with torch.enable_grad():
        model(probe).float().sum().backward()
    unused = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    for _, p in unused:
        p.requires_grad_(False)
    if unused:
        log.info(
            "train: %d parameter tensors (%d values) are outside the forward pass (e.g. %s); "
            "frozen for DDP",
            len(unused), sum(p.numel() for _, p in unused), unused[0][0],
        )  # fmt: skip


def _build_optimizer(s: TrainSettings, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW and the configured scheduler (None for `scheduler=none`)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    if s.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=s.epochs, eta_min=s.lr * 0.01
        )
    elif s.scheduler == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=max(1, s.patience // 3)
        )
    else:
        scheduler = None
    return optimizer, scheduler


def _restore_progress(s: TrainSettings, state: dict[str, Any], trainer: _Trainer) -> _Progress:
    """Put a resumed run's optimizer, scheduler and scaler back; continue its epoch count."""
    if not state:
        return _Progress()
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.scheduler is not None and state.get("scheduler"):
        trainer.scheduler.load_state_dict(state["scheduler"])
        if s.scheduler == "cosine":
            # `epochs` is the total: a resume may extend it.
            trainer.scheduler.T_max = s.epochs
    trainer.rt.scaler.load_state_dict(state["scaler"])
    progress = _Progress(
        start_epoch=int(state["epoch"]) + 1,
        best_miou=float(state["best_miou"]),
        stale=int(state["stale"]),
    )
    log.info(
        "train: resuming at epoch %d (best val mean IoU %.4f)",
        progress.start_epoch,
        progress.best_miou,
    )
    return progress


def _start_tracking(
    cfg: TrainConfig,
    data: str,
    out: str,
    d: _Data,
    ctx: _Context,
    state: dict[str, Any],
    root: Path,
    stack: ExitStack,
) -> _Tracker:
    """Open the MLflow run (a resumed run continues its own, so metric steps continue). A run
    a killed pod left RUNNING on this output is marked FAILED first; SIGTERM or Ctrl-C ends
    this one as KILLED."""
    mlflow = tracking.setup(cfg)
    run_id = state.get("run_id") or None
    output = out if storage.is_s3(out) else str(Path(out).resolve())
    tracking.end_stale_runs(cfg, output, keep=run_id)
    run = stack.enter_context(
        mlflow.start_run(run_id=run_id)
        if run_id
        else mlflow.start_run(run_name=f"train-{cfg.project.subname}")
    )
    stack.enter_context(tracking.killed_on_signal())
    mlflow.set_tag(tracking.OUTPUT_TAG, output)
    if not run_id:
        _log_run_inputs(mlflow, cfg, data, d, ctx)
    save_resolved(cfg, root)
    mlflow.log_artifact(str(root / "cfg.yaml"))
    return _Tracker(root, mlflow, run, Manifest(root, key="epoch"))


def _log_run_inputs(mlflow, cfg: TrainConfig, data: str, d: _Data, ctx: _Context) -> None:
    """A new run's params, tags and dataset input: what it was trained with and on."""
    mlflow.log_params(tracking.params_flat(cfg.train.model_dump(mode="json"), "train."))
    mlflow.log_params(
        {
            "data.uri": data,
            "data.train_tiles": len(d.train_ds),
            "data.val_tiles": len(d.val_ds),
            "data.labels": ",".join(d.labels.names),
            "data.tile_size": d.spec.tile_size,
            "runtime.device": str(ctx.device),
            "runtime.amp": str(ctx.amp_dtype).replace("torch.", "") if ctx.amp_dtype else "off",
            "runtime.world_size": ctx.world,
        }
    )
    mlflow.set_tags(
        {
            "segloop.stage": "train",
            "segloop.split_hash": d.split["hash"],
            "segloop.data_hash": d.split.get("data_hash", ""),
            "segloop.project": cfg.project.name,
            "segloop.subname": cfg.project.subname,
        }
    )
    tracking.log_split_input(d.split, source=str(data))


def _fit(
    s: TrainSettings,
    d: _Data,
    trainer: _Trainer,
    progress: _Progress,
    tracker: _Tracker | None,
    ctx: _Context,
) -> None:
    """The epoch loop: train, validate, step the scheduler, record; stop early on a plateau."""
    for epoch in range(progress.start_epoch, s.epochs + 1):
        if ctx.distributed:
            # A different shuffle per epoch, the same on every rank.
            d.train_loader.sampler.set_epoch(epoch)
            if os.environ.get(SHARD_LOG_ENV):
                _log_shard(Path(os.environ[SHARD_LOG_ENV]), s, d, ctx, epoch)
        row, miou = _run_epoch(s, epoch, d, trainer, progress.best_miou, ctx.main)
        improved = progress.observe(miou)
        if trainer.scheduler is not None:
            if s.scheduler == "plateau":
                trainer.scheduler.step(miou)
            else:
                trainer.scheduler.step()
        progress.epochs_run += 1
        progress.history.append(row)
        if tracker is not None:
            _log_epoch(s, tracker, row, improved)
            # With `train.keep=last` every epoch's weights become best/.
            as_best = improved or s.keep == "last"
            _save_epoch_checkpoints(tracker, trainer, d.spec, progress, epoch, as_best)
            tracker.manifest.add({**row, "status": OK, "best": improved})
        if s.patience and d.val_loader is not None and progress.stale >= s.patience:
            log.info("train: early stop at epoch %d (no gain for %d epochs)", epoch, progress.stale)
            break


def _log_shard(folder: Path, s: TrainSettings, d: _Data, ctx: _Context, epoch: int) -> None:
    """Debugging aid: the tiles this rank trains on this epoch, one JSON line per epoch."""
    loader = d.train_loader
    batches = min(len(loader), s.max_steps_per_epoch or len(loader))
    order = list(loader.sampler)[: batches * loader.batch_size]
    folder.mkdir(parents=True, exist_ok=True)
    row = {"rank": ctx.rank, "world": ctx.world, "epoch": epoch, "batches": batches,
           "tiles": [d.train_ds.images[i].stem for i in order]}  # fmt: skip
    with (folder / f"rank{ctx.rank}.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")


def _global_train_stats(tr: dict[str, float], device: torch.device) -> tuple[float, float]:
    """(mean loss, images/s) over every rank: the loss weighted by images, the rates summed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tr["loss"], tr["images_per_s"]
    t = torch.tensor([tr["loss"] * tr["images"], tr["images"], tr["images_per_s"]],
                     dtype=torch.float64, device=device)  # fmt: skip
    torch.distributed.all_reduce(t)
    t = t.cpu()
    return float(t[0] / max(t[1], 1)), float(t[2])


def _run_epoch(
    s: TrainSettings, epoch: int, d: _Data, trainer: _Trainer, best_miou: float, main: bool
) -> tuple[dict[str, Any], float]:
    """One epoch of training and validation: the manifest row and the val mean IoU."""
    bar = tqdm(
        total=min(len(d.train_loader), s.max_steps_per_epoch or len(d.train_loader)),
        desc=f"epoch {epoch}/{s.epochs}",
        disable=not (main and sys.stderr.isatty()),
        dynamic_ncols=True,
        leave=False,
    )

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", best_iou=f"{max(best_miou, 0):.3f}")

    tr = train_epoch(
        trainer.model, d.train_loader, trainer.optimizer, trainer.loss_fn, trainer.rt,
        s.accumulate, s.max_steps_per_epoch, on_step,
    )  # fmt: skip
    bar.close()
    train_loss, images_per_s = _global_train_stats(tr, trainer.rt.device)
    row: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": train_loss,
        "lr": trainer.optimizer.param_groups[0]["lr"],
        "images_per_s": images_per_s,
    }
    if d.val_loader is None:
        # No validation: every epoch is "best".
        return row, best_miou + 1.0
    cm, val_loss = validate(trainer.model, d.val_loader, trainer.loss_fn, trainer.rt)
    sc = scores(cm, d.labels.names)
    row.update({"val_loss": val_loss, **flat_metrics(sc, "val_")})
    return row, sc["mean_iou"]


def _log_epoch(s: TrainSettings, tracker: _Tracker, row: dict[str, Any], improved: bool) -> None:
    """One log line and the epoch's MLflow metrics (step = epoch)."""
    log.info(
        "epoch %d/%d: train_loss %.4f val_mean_iou %s lr %.2e (%.1f img/s)%s",
        row["epoch"], s.epochs, row["train_loss"], f"{row.get('val_mean_iou', float('nan')):.4f}",
        row["lr"], row["images_per_s"], " *best*" if improved else "",
    )  # fmt: skip
    tracker.mlflow.log_metrics(
        {k: float(v) for k, v in row.items() if k != "epoch"}, step=row["epoch"]
    )


def _save_epoch_checkpoints(
    tracker: _Tracker,
    trainer: _Trainer,
    spec: ModelSpec,
    progress: _Progress,
    epoch: int,
    as_best: bool,
) -> None:
    """best/ when `as_best`; last/ and its state.pt every epoch, so `--resume` can continue."""
    if as_best:
        save_checkpoint(trainer.net, spec, tracker.root / "best")
    save_checkpoint(trainer.net, spec, tracker.root / "last")
    torch.save(
        {
            "epoch": epoch,
            "best_miou": progress.best_miou,
            "stale": progress.stale,
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else {},
            "scaler": trainer.rt.scaler.state_dict(),
            "run_id": tracker.run.info.run_id,
        },
        tracker.root / "last" / STATE,
    )


def _save_best_model(
    s: TrainSettings, net: torch.nn.Module, spec: ModelSpec, tracker: _Tracker
) -> str | None:
    """Make sure best/ exists and log it to MLflow as the run's model; returns its URI."""
    best_dir = tracker.root / "best"
    if not (best_dir / "model.pt").exists():
        # No epoch saved one (e.g. a resume already at `epochs`): keep the current weights.
        save_checkpoint(net, spec, best_dir)
    if not s.log_model:
        return None
    best_model, best_spec = load_checkpoint(best_dir, "cpu")
    info = log_checkpoint_to_mlflow(best_model, best_spec, best_dir, name="model")
    tracker.mlflow.set_tag("segloop.model_uri", info.model_uri)
    return info.model_uri


def _write_outputs(
    cfg: TrainConfig,
    tracker: _Tracker,
    split: dict,
    progress: _Progress,
    seconds: float,
    model_uri: str | None,
) -> dict[str, Any]:
    """The final metric, metrics.json, mlflow.json and cfg.yaml; returns the metrics."""
    root, mlflow, run = tracker.root, tracker.mlflow, tracker.run
    history = progress.history
    mlflow.log_metric("best_val_mean_iou", max(progress.best_miou, 0.0))
    metrics = {
        "best_val_mean_iou": max(progress.best_miou, 0.0),
        "epochs_run": progress.epochs_run,
        "last_epoch": progress.start_epoch + progress.epochs_run - 1,
        "start_epoch": progress.start_epoch,
        "seconds": round(seconds, 3),
        "images_per_s": (
            sum(r["images_per_s"] for r in history) / len(history) if history else None
        ),
        "split_hash": split["hash"],
        "data_hash": split.get("data_hash"),
        "run_id": run.info.run_id,
        "model_uri": model_uri,
    }
    storage.write_json(
        root / "mlflow.json",
        {
            "tracking_uri": mlflow.get_tracking_uri(),
            "experiment_id": run.info.experiment_id,
            "run_id": run.info.run_id,
            "model_uri": model_uri,
        },
    )
    write_metrics(root, metrics)
    save_resolved(cfg, root)
    return metrics
