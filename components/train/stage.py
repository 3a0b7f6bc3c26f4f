"""`run_train`: preprocessed tiles -> a trained checkpoint, tracked in MLflow.

Output layout (folder or s3:// prefix):

    best/model.pt, best/model.json    the checkpoint with the best validation mean IoU
    last/model.pt, last/model.json    the latest epoch's weights
    last/state.pt                     optimizer, scheduler, scaler, epoch, best score, MLflow
                                      run id: what `--resume` needs to continue the epoch count
    mlflow.json                       tracking URI, experiment, run id, logged model URI
    manifest.jsonl                    one line per epoch (key `epoch`): losses, IoU, Dice, lr
    metrics.json, cfg.yaml

Under `torchrun` (WORLD_SIZE > 1) every rank trains on its shard (DistributedDataParallel,
NCCL on CUDA, Gloo on CPU); rank 0 alone writes files and talks to MLflow.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from components.core import storage, tracking
from components.core.artifacts import OK, Manifest, write_metrics
from components.core.checkpoint import load_checkpoint, log_checkpoint_to_mlflow, save_checkpoint
from components.core.config import save_resolved
from components.core.errors import SegloopError
from components.core.labels import LabelSet
from components.core.metrics import flat_metrics, scores
from components.core.model import ModelSpec, build_model
from components.core.precision import pick_amp
from components.train.data import Normalizer, TileDataset, build_transforms
from components.train.engine import (
    Runtime,
    pick_device,
    pick_workers,
    seed_everything,
    train_epoch,
    validate,
)
from components.train.losses import CombinedLoss
from components.train.settings import TrainConfig

log = logging.getLogger(__name__)
STATE = "state.pt"


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


def _loader(ds, batch_size, shuffle, workers, device, seed, distributed, drop_last):
    sampler = DistributedSampler(ds, shuffle=shuffle, seed=seed) if distributed else None
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


def _init_distributed() -> tuple[int, int, int | None]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend=backend)
    return torch.distributed.get_rank(), world, local_rank


def run_train(
    cfg: TrainConfig, *, data: str, out: str, resume: str | None = None
) -> dict[str, Any]:
    """Train on a preprocess output; returns metrics (best val mean IoU, run id, model URI)."""
    s = cfg.train
    resume = resume or s.resume
    rank, world, local_rank = _init_distributed()
    distributed = world > 1
    main = rank == 0
    seed_everything(s.seed + rank)
    device = pick_device(s.device, local_rank)
    amp_dtype = pick_amp(s.amp, device)
    channels_last = s.channels_last if s.channels_last is not None else True

    with ExitStack() as stack:
        data_root = stack.enter_context(storage.local_input(data))
        root = stack.enter_context(storage.output_dir(out, resume=False)) if main else None
        split, stats, labels = read_prepared(data_root)
        spec = make_spec(cfg, split, stats, labels)

        train_ds = TileDataset(
            data_root, "train", build_transforms(s.augment, spec.tile_size, True), s.cache_images
        )
        val_ds = TileDataset(data_root, "val", None, s.cache_images)
        if not len(train_ds):
            raise SegloopError(f"{data}: no training tiles under train/images")
        per_rank_batch = max(1, s.batch_size // world)
        train_loader = _loader(
            train_ds,
            per_rank_batch,
            True,
            pick_workers(s.workers, device),
            device,
            s.seed,
            distributed,
            True,
        )
        val_loader = (
            _loader(val_ds, per_rank_batch, False, 0, device, s.seed, distributed, False)
            if len(val_ds)
            else None
        )
        if val_loader is None:
            log.warning("train: no validation tiles; the last epoch is kept as best, no early stop")

        model = build_model(
            spec.arch, spec.encoder_name, s.encoder_weights, 3, spec.classes, **spec.model_kwargs
        )
        state: dict[str, Any] = {}
        if resume:
            folder = _find_state(
                resume,
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="segloop-train-"))),
            )
            resumed, old_spec = load_checkpoint(folder, "cpu")
            if old_spec.classes != spec.classes or old_spec.arch != spec.arch:
                raise SegloopError(
                    f"--resume {resume}: that run trained {old_spec.arch}/{old_spec.classes} "
                    f"outputs, this config asks for {spec.arch}/{spec.classes}"
                )
            model.load_state_dict(resumed.state_dict())
            state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
            if main and resume.rstrip("/") != str(out).rstrip("/"):
                best = storage.join(resume, "best")
                if storage.exists(storage.join(best, "model.pt")):
                    storage.download_dir(best, root / "best")
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        if distributed:
            ids = [local_rank] if device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        net = model.module if distributed else model

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
        rt = Runtime(
            device,
            amp_dtype,
            channels_last,
            binary=spec.binary,
            num_classes=labels.num_classes,
            normalizer=Normalizer(spec.mean, spec.std).to(device),
        )
        loss_fn = CombinedLoss(s, spec.binary)
        start_epoch, best_miou, stale = 1, -1.0, 0
        if state:
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state.get("scheduler"):
                scheduler.load_state_dict(state["scheduler"])
                if s.scheduler == "cosine":
                    scheduler.T_max = s.epochs
            rt.scaler.load_state_dict(state["scaler"])
            start_epoch = int(state["epoch"]) + 1
            best_miou, stale = float(state["best_miou"]), int(state["stale"])
            log.info("train: resuming at epoch %d (best val mean IoU %.4f)", start_epoch, best_miou)

        run = None
        mlflow = None
        if main:
            mlflow = tracking.setup(cfg)
            run_id = state.get("run_id") or None
            run = stack.enter_context(
                mlflow.start_run(run_id=run_id)
                if run_id
                else mlflow.start_run(run_name=f"train-{cfg.project.subname}")
            )
            if not run_id:
                mlflow.log_params(tracking.params_flat(s.model_dump(mode="json"), "train."))
                mlflow.log_params(
                    {
                        "data.uri": data,
                        "data.train_tiles": len(train_ds),
                        "data.val_tiles": len(val_ds),
                        "data.labels": ",".join(labels.names),
                        "data.tile_size": spec.tile_size,
                        "runtime.device": str(device),
                        "runtime.amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
                        "runtime.world_size": world,
                    }
                )
                mlflow.set_tags(
                    {
                        "segloop.stage": "train",
                        "segloop.split_hash": split["hash"],
                        "segloop.data_hash": split.get("data_hash", ""),
                        "segloop.project": cfg.project.name,
                        "segloop.subname": cfg.project.subname,
                    }
                )
                tracking.log_split_input(split, source=str(data))
            save_resolved(cfg, root)
            mlflow.log_artifact(str(root / "cfg.yaml"))
            manifest = Manifest(root, key="epoch")

        history: list[dict[str, Any]] = []
        epochs_run = 0
        start = time.monotonic()
        for epoch in range(start_epoch, s.epochs + 1):
            if distributed:
                train_loader.sampler.set_epoch(epoch)
            bar = tqdm(
                total=min(len(train_loader), s.max_steps_per_epoch or len(train_loader)),
                desc=f"epoch {epoch}/{s.epochs}",
                disable=not (main and sys.stderr.isatty()),
                dynamic_ncols=True,
                leave=False,
            )

            def on_step(step: int, loss: float, bar=bar, best=best_miou) -> None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", best_iou=f"{max(best, 0):.3f}")

            tr = train_epoch(
                model, train_loader, optimizer, loss_fn, rt, s.accumulate,
                s.max_steps_per_epoch, on_step,
            )  # fmt: skip
            bar.close()
            lr = optimizer.param_groups[0]["lr"]
            row: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": tr["loss"],
                "lr": lr,
                "images_per_s": tr["images_per_s"],
            }
            if val_loader is not None:
                cm, val_loss = validate(model, val_loader, loss_fn, rt)
                sc = scores(cm, labels.names)
                row.update({"val_loss": val_loss, **flat_metrics(sc, "val_")})
                miou = sc["mean_iou"]
            else:
                miou = best_miou + 1.0  # no validation: every epoch is "best"
            improved = miou > best_miou + 1e-6
            if improved:
                best_miou, stale = miou, 0
            else:
                stale += 1
            if scheduler is not None:
                scheduler.step(miou) if s.scheduler == "plateau" else scheduler.step()
            epochs_run += 1
            history.append(row)
            if main:
                log.info(
                    "epoch %d/%d: train_loss %.4f val_mean_iou %s lr %.2e (%.1f img/s)%s",
                    epoch, s.epochs, tr["loss"], f"{row.get('val_mean_iou', float('nan')):.4f}",
                    lr, tr["images_per_s"], " *best*" if improved else "",
                )  # fmt: skip
                mlflow.log_metrics(
                    {k: float(v) for k, v in row.items() if k != "epoch"}, step=epoch
                )
                if improved:
                    save_checkpoint(net, spec, root / "best")
                save_checkpoint(net, spec, root / "last")
                torch.save(
                    {
                        "epoch": epoch,
                        "best_miou": best_miou,
                        "stale": stale,
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else {},
                        "scaler": rt.scaler.state_dict(),
                        "run_id": run.info.run_id,
                    },
                    root / "last" / STATE,
                )
                manifest.add({**row, "status": OK, "best": improved})
            if s.patience and val_loader is not None and stale >= s.patience:
                log.info("train: early stop at epoch %d (no gain for %d epochs)", epoch, stale)
                break

        if distributed:
            torch.distributed.barrier()
        if not main:
            torch.distributed.destroy_process_group()
            return {"rank": rank}
        seconds = time.monotonic() - start
        best_dir = root / "best"
        if not (best_dir / "model.pt").exists():
            save_checkpoint(net, spec, best_dir)
        model_uri = None
        if s.log_model:
            best_model, best_spec = load_checkpoint(best_dir, "cpu")
            info = log_checkpoint_to_mlflow(best_model, best_spec, best_dir, name="model")
            model_uri = info.model_uri
            mlflow.set_tag("segloop.model_uri", model_uri)
        mlflow.log_metric("best_val_mean_iou", max(best_miou, 0.0))
        last_epoch = start_epoch + epochs_run - 1
        metrics = {
            "best_val_mean_iou": max(best_miou, 0.0),
            "epochs_run": epochs_run,
            "last_epoch": last_epoch,
            "start_epoch": start_epoch,
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
    if distributed:
        torch.distributed.destroy_process_group()
    return metrics
