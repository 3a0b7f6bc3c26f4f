"""Evaluation at full resolution through the tiled inference path, report, MLflow logging."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from model_helpers import TINY_MODEL  # tests/ is on sys.path
from PIL import Image

from components.core.images import load_mask
from components.core.metrics import IGNORE_INDEX, confusion_matrix, scores
from components.preprocess.stage import run_preprocess
from components.train.stage import run_train
from pipelines.cli import cli
from pipelines.config import load_config
from pipelines.demo.toydata import write_toy_dataset


def test_evaluate_full_resolution_report_and_mlflow(tmp_path, mlflow_env):
    data = write_toy_dataset(tmp_path / "ds", n=14, seed=11, sizes=(70, 130))
    overrides = [
        f"stack.dir={tmp_path / 'stack'}",
        "mlflow.experiment=test-evaluate",
        "preprocess.tile_size=64",
        "preprocess.test_fraction=0.3",
        "train.epochs=2",
        "train.max_steps_per_epoch=3",
        "train.workers=0",
        "train.pad_divisor=8",
        "train.log_model=false",
        "evaluate.grid_images=2",
    ]
    cfg = load_config(None, overrides, extra={"train": TINY_MODEL})
    run_preprocess(cfg, inputs=[str(data)], out=str(tmp_path / "pre"))
    trained = run_train(cfg, data=str(tmp_path / "pre"), out=str(tmp_path / "train"))

    # Through the CLI, as a person would run it.
    args = ["evaluate", "--model", str(tmp_path / "train"), "--data", str(tmp_path / "pre"),
            "--out", str(tmp_path / "eval")] + [a for o in overrides for a in ("-o", o)]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False, env={"TERM": "dumb"})
    assert result.exit_code == 0, result.output
    assert "mean IoU" in result.output
    ev = tmp_path / "eval"
    metrics = json.loads((ev / "metrics.json").read_text())

    # Predictions are full resolution (the test images are larger than the 64 px tile) and the
    # metrics are exactly those of the confusion matrix of predictions vs. masks.
    full = tmp_path / "pre" / "test" / "full"
    names = ["background", "weed", "crop"]
    total = np.zeros((3, 3), np.int64)
    inter, union, sizes = np.zeros(3), np.zeros(3), np.zeros(3)  # the independent oracle
    per_image = {
        e["record_id"]: e["mean_iou"]
        for e in map(json.loads, (ev / "manifest.jsonl").read_text().splitlines())
    }
    ids = sorted(p.stem for p in (full / "images").glob("*"))
    assert ids and metrics["images"] == len(ids)
    assert any(max(Image.open(full / "images" / f"{i}.png").size) > 64 for i in ids)
    for rid in ids:
        truth = load_mask(full / "masks" / f"{rid}.png")
        pred = load_mask(ev / "predictions" / f"{rid}.png")
        assert pred.shape == truth.shape
        total += confusion_matrix(truth, pred, 3)
        # Plain set arithmetic per class on the scored pixels, not the product's helpers.
        keep = truth != IGNORE_INDEX
        image_iou = []
        for c in range(3):
            a, b = (truth == c) & keep, (pred == c) & keep
            inter[c] += (a & b).sum()
            union[c] += (a | b).sum()
            sizes[c] += a.sum() + b.sum()
            if (a | b).any():
                image_iou.append((a & b).sum() / (a | b).sum())
        assert per_image[rid] == pytest.approx(np.mean(image_iou), abs=1e-12), rid
    assert metrics["confusion_matrix"] == total.tolist()
    expected = scores(total, names)
    assert abs(metrics["mean_iou"] - expected["mean_iou"]) < 1e-12
    assert set(metrics["iou"]) == {"background", "weed", "crop"}
    # The whole matrix adds up to the scored pixels, its diagonal to the agreeing ones.
    assert np.trace(total) == inter.sum() and total.sum() == sizes.sum() / 2
    for c, name in enumerate(names):
        if union[c]:
            assert metrics["iou"][name] == pytest.approx(inter[c] / union[c], abs=1e-12), name
            assert metrics["dice"][name] == pytest.approx(2 * inter[c] / sizes[c], abs=1e-12)
        else:
            assert metrics["iou"][name] is None and metrics["dice"][name] is None
    defined = [inter[c] / union[c] for c in range(3) if union[c]]
    assert metrics["mean_iou"] == pytest.approx(np.mean(defined), abs=1e-12)
    # Models are compared on the hash of the test split (images + masks) they were scored on.
    split = json.loads((tmp_path / "pre" / "split.json").read_text())
    assert metrics["split_hash"] == split.get("test_hash", split["hash"])

    # Report: Markdown and HTML pointing at PNG figures that exist.
    md = (ev / "report.md").read_text()
    html = (ev / "report.html").read_text()
    for fig in ("iou_bars", "confusion", "best", "worst"):
        assert f"figures/{fig}.png" in md and f"figures/{fig}.png" in html
        with Image.open(ev / "figures" / f"{fig}.png") as img:
            assert img.format == "PNG" and img.size[0] > 100

    # The report draws masks in the report colours and says which colour is which class.
    from components.core.labels import overlay_color

    for class_id, name in ((1, "weed"), (2, "crop")):
        assert f'background:{overlay_color(class_id)}"></span>{name}' in html
    assert "Images of bare soil are left out" in html and "<section" in html

    # Logged into the training run: test metrics and the report.
    client = MlflowClient(mlflow_env)
    assert metrics["run_id"] == trained["run_id"]
    run = client.get_run(trained["run_id"])
    assert abs(run.data.metrics["test_mean_iou"] - metrics["mean_iou"]) < 1e-9
    assert "test_iou_weed" in run.data.metrics
    logged = {a.path for a in client.list_artifacts(trained["run_id"], "evaluation")}
    assert "evaluation/report.html" in logged and "evaluation/figures" in logged


def test_best_images_have_plants(tmp_path):
    """Bare-soil images score a mean IoU of 1.000 when nothing is predicted on them: the best
    images are the best ones with plants in the ground truth; the worst are the lowest."""
    from components.core.images import save_mask_png
    from components.evaluate.report import pick_images

    rows = []
    for rid, plants, miou in (("bare1", 0, 1.0), ("bare2", 0, 1.0), ("p1", 1, 0.8),
                              ("p2", 2, 0.6), ("p3", 1, 0.3), ("p4", 2, 0.9)):  # fmt: skip
        mask = np.zeros((8, 8), np.uint8)
        mask[2:5, 2:5] = plants
        save_mask_png(tmp_path / f"{rid}.png", mask)
        rows.append({"record_id": rid, "mean_iou": miou, "mask": str(tmp_path / f"{rid}.png")})
    best, worst = pick_images(rows, 3)
    assert [r["record_id"] for r in best] == ["p4", "p1", "p2"]
    assert [r["record_id"] for r in worst] == ["p3", "p2", "p1"]
    # Only bare soil in the test split: then those are what there is to show.
    best, _ = pick_images(rows[:2], 3)
    assert [r["record_id"] for r in best] == ["bare1", "bare2"]
