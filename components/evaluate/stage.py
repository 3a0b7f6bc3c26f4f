"""`run_evaluate`: a model on the full-resolution test split, through the tiled inference path.

Reads a preprocess output (`test/full/images`, `test/full/masks`, `labels.json`, `split.json`)
and a model (a train output folder, a checkpoint folder, s3://, `models:/...`, `runs:/...`).

Output layout:

    metrics.json              mean and per-class IoU, Dice, precision, recall, pixel accuracy,
                              confusion matrix, split hash, model URI, MLflow run
    predictions/<id>.png      predicted class ids at full resolution
    report.md, report.html    the report, with figures/ (IoU bars, confusion matrix, best and
                              worst images with overlays, colour legend)
    manifest.jsonl            one line per test image (its mean IoU) ; cfg.yaml
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from components.core import storage, tracking
from components.core.artifacts import FAILED, OK, Manifest, check_failures, write_metrics
from components.core.checkpoint import is_mlflow_uri, load_checkpoint
from components.core.config import save_resolved
from components.core.cpu_budget import apply_torch_threads
from components.core.device import pick_device
from components.core.errors import SegloopError
from components.core.images import IMAGE_SUFFIXES, encode_png, load_mask, load_rgb
from components.core.inference import TileEngine, predict_image
from components.core.labels import LabelSet
from components.core.metrics import confusion_matrix, flat_metrics, scores
from components.core.model import ModelSpec
from components.core.precision import pick_amp
from components.core.predictor import SmpPredictor
from components.core.progress import track
from components.evaluate import report
from components.evaluate.settings import EvaluateConfig, EvaluateSettings

log = logging.getLogger(__name__)


def resolve_model(
    model: str, tracking_uri: str | None = None
) -> tuple[str, str | None, str | None]:
    """(checkpoint URI, MLflow run id, MLflow model URI) for a model reference.

    A train output folder (with best/ and mlflow.json) resolves to its best checkpoint and its
    run; an MLflow URI to itself and the run that logged it, asked of the tracking server
    `tracking_uri` (needed for models:/ URIs: `tracking.tracking_uri(cfg)`).
    """
    info_uri = storage.join(model, "mlflow.json")
    if not is_mlflow_uri(model) and storage.exists(info_uri):
        info = storage.read_json(info_uri)
        return storage.join(model, "best"), info.get("run_id"), info.get("model_uri")
    if model.startswith(("models:/", "runs:/")):
        if tracking_uri is None:
            raise SegloopError(f"resolving {model} needs the MLflow tracking URI")
        return model, tracking.run_id_for_model(model, tracking_uri), model
    return model, None, None


def _predict(engine: TileEngine, image: np.ndarray, mode: str, tile: int) -> np.ndarray:
    if mode == "resize":
        # The model was trained on whole images resized to one tile: do the same, then
        # bring the probabilities back to full resolution.
        small = np.asarray(Image.fromarray(image).resize((tile, tile), Image.Resampling.BILINEAR))
        probs = engine.predict_tiles(small[None])
        probs = F.interpolate(probs, size=image.shape[:2], mode="bilinear", align_corners=False)
        return probs[0].argmax(0).to(torch.uint8).cpu().numpy()
    return predict_image(engine, image).argmax(0).to(torch.uint8).cpu().numpy()


@dataclass
class TestSplit:
    """The full-resolution test images of a preprocess output, and what identifies them."""

    labels: LabelSet
    images: dict[str, str]  # record id -> image URI
    test_hash: str
    data_hash: str | None
    mode: str  # how preprocess cut training tiles: "grid", or "resize" to one tile


def read_test_split(data: str) -> TestSplit:
    split = storage.read_json(storage.join(data, "split.json"))
    images = {
        Path(u).stem: u
        for u in storage.list_files(storage.join(data, "test", "full", "images"))
        if Path(u).suffix.lower() in IMAGE_SUFFIXES
    }
    if not images:
        raise SegloopError(
            f"{data} has no test/full/images: preprocess with preprocess.test_fraction > 0"
        )
    return TestSplit(
        labels=LabelSet.load(storage.join(data, "labels.json")),
        images=images,
        # The hash of the test split alone (older outputs: of the whole split): models scored
        # on the same test images and masks are comparable whatever they were trained on.
        test_hash=split.get("test_hash") or split["hash"],
        data_hash=split.get("data_hash"),
        mode=split.get("params", {}).get("mode", "grid"),
    )


def build_engine(
    s: EvaluateSettings, net: torch.nn.Module, spec: ModelSpec, device: torch.device
) -> TileEngine:
    return TileEngine(
        SmpPredictor(net, spec).to(device),
        device,
        tile_size=spec.tile_size,
        overlap=s.overlap,
        batch_size=s.batch_size,
        amp_dtype=pick_amp(s.amp, device),
    )


def score_images(
    engine: TileEngine, test: TestSplit, data: str, tile: int, root: Path, manifest: Manifest
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The summed confusion matrix and one row per scored image; predictions written under
    root/predictions, an image that cannot be read is a FAILED manifest line."""
    n = test.labels.num_classes
    total = np.zeros((n, n), dtype=np.int64)
    (root / "predictions").mkdir(exist_ok=True)
    per_image: list[dict[str, Any]] = []
    for rid in track(sorted(test.images), total=len(test.images), desc="evaluate", unit="img"):
        mask_uri = storage.join(data, "test", "full", "masks", f"{rid}.png")
        try:
            image = load_rgb(test.images[rid])
            truth = load_mask(mask_uri)
            if truth.shape != image.shape[:2]:
                raise SegloopError(f"{mask_uri}: size {truth.shape} != image {image.shape[:2]}")
        except SegloopError as exc:
            manifest.add({"record_id": rid, "status": FAILED, "reason": str(exc)})
            continue
        pred = _predict(engine, image, test.mode, tile)
        cm = confusion_matrix(truth, pred, n)
        total += cm
        pred_path = root / "predictions" / f"{rid}.png"
        pred_path.write_bytes(encode_png(pred))
        row = {
            "record_id": rid,
            "mean_iou": scores(cm, test.labels.names)["mean_iou"],
            "image": test.images[rid],
            "mask": mask_uri,
            "prediction": str(pred_path),
        }
        per_image.append(row)
        manifest.add({**row, "prediction": f"predictions/{rid}.png", "status": OK})
    return total, per_image


def write_report(
    root: Path,
    summary: dict[str, Any],
    total: np.ndarray,
    per_image: list,
    labels: LabelSet,
    grid_images: int,
) -> None:
    """figures/ (IoU bars, confusion matrix, best and worst images, legend), report.md/html."""
    result = summary["scores"]
    figures = root / "figures"
    figures.mkdir(exist_ok=True)
    # Best: images with plants (bare soil at IoU 1.000 tells a reader nothing).
    best, worst = report.pick_images(per_image, min(grid_images, len(per_image)))
    report.iou_bars(result, figures / "iou_bars.png")
    report.confusion_plot(total, labels.names, figures / "confusion.png")
    report.image_grid(best, labels, figures / "best.png", "Best test images with plants")
    report.image_grid(worst, labels, figures / "worst.png", "Worst test images")
    report.legend_png(labels, figures / "legend.png")
    report.write_reports(root, summary, labels.names)


def run_evaluate(cfg: EvaluateConfig, *, model: str, data: str, out: str) -> dict[str, Any]:
    s = cfg.evaluate
    apply_torch_threads()  # compute threads from the CPU quota, not the node's cores
    start = time.monotonic()
    # MLflow model URIs resolve on the configured server, passed explicitly.
    server = tracking.tracking_uri(cfg) if is_mlflow_uri(str(model)) else None
    ckpt, run_id, mlflow_model = resolve_model(str(model), server)
    device = pick_device(s.device, "evaluate.device")
    net, spec = load_checkpoint(ckpt, device, tracking_uri=server)
    test = read_test_split(data)
    labels = test.labels
    if spec.label_set.names != labels.names:
        raise SegloopError(
            f"model {model} predicts {spec.label_set.names} but the test data has labels "
            f"{labels.names}; evaluate with data preprocessed for this model's labels"
        )
    engine = build_engine(s, net, spec, device)
    with storage.output_dir(out, resume=False) as root:
        manifest = Manifest(root)
        total, per_image = score_images(engine, test, data, spec.tile_size, root, manifest)
        check_failures("evaluate", manifest.failed(), s.max_failures)
        if not per_image:
            raise SegloopError("evaluate: no test image could be evaluated; see manifest.jsonl")
        result = scores(total, labels.names)
        identity = {"split_hash": test.test_hash, "data_hash": test.data_hash}
        summary = {"model": str(model), "images": len(per_image), **identity, "scores": result}
        write_report(root, summary, total, per_image, labels, s.grid_images)
        metrics: dict[str, Any] = {
            **result,
            "confusion_matrix": total.tolist(),
            "labels": labels.names,
            "images": len(per_image),
            "failed": len(manifest.failed()),
            **identity,
            "model": str(model),
            "model_uri": mlflow_model,
            "run_id": run_id,
            "seconds": round(time.monotonic() - start, 3),
        }
        save_resolved(cfg, root)
        if s.log_to_mlflow:
            metrics["run_id"] = _log(cfg, root, result, test.test_hash, run_id)
        write_metrics(root, metrics)
    log.info("evaluate: mean IoU %.4f on %d test images", result["mean_iou"], len(per_image))
    return metrics


def _log(cfg, root: Path, result: dict, test_hash: str, run_id: str | None) -> str:
    """Metrics `test_*` and the report into the model's training run (or a new run)."""
    mlflow = tracking.setup(cfg)
    with (
        mlflow.start_run(run_id=run_id)
        if run_id
        else mlflow.start_run(run_name=f"evaluate-{cfg.project.subname}")
    ) as run:
        mlflow.log_metrics(flat_metrics(result, "test_"))
        mlflow.set_tag("segloop.eval_split_hash", test_hash)
        for name in ("report.md", "report.html", "cfg.yaml"):
            mlflow.log_artifact(str(root / name), artifact_path="evaluation")
        mlflow.log_artifacts(str(root / "figures"), artifact_path="evaluation/figures")
        return run.info.run_id
