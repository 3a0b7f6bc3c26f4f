"""The KFP components: their interfaces (typed artifacts, images) and their bodies, called
directly through `.python_func` with small inputs, in the order the pipelines chain them."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from kfp import dsl
from kfp_helpers import run_body, tiny_project  # tests/ is on sys.path

from components.component_io import log_metrics, scalar_metrics, self_contained_html
from pipelines.config import load_config, run_config_json
from pipelines.settings import STAGES

DATASET, MODEL, METRICS = "system.Dataset@0.0.1", "system.Model@0.0.1", "system.Metrics@0.0.1"
INTERFACES = {
    "query": ({}, {"records": DATASET}),
    "infer": ({"records": DATASET}, {"predictions": DATASET}),
    "select": ({"predictions": DATASET, "records": DATASET}, {"selected": DATASET}),
    "upload_cvat": ({"predictions": DATASET}, {"tasks": DATASET}),
    "download_cvat": ({}, {"dataset": DATASET}),
    "preprocess": ({"dataset": DATASET}, {"splits": DATASET}),
    "train": ({"splits": DATASET}, {"model": MODEL}),
    "evaluate": (
        {"model": MODEL, "splits": DATASET},
        {"evaluation": DATASET, "report": "system.HTML@0.0.1"},
    ),
    "register": (
        {"evaluation": DATASET},
        {"registration": DATASET, "comparison": "system.Markdown@0.0.1"},
    ),
    "loop_report": ({"dataset": DATASET}, {"summary": DATASET, "report": "system.HTML@0.0.1"}),
}


def component(stage: str):
    module = importlib.import_module(f"components.{stage}.component")
    return getattr(module, stage)


@pytest.mark.parametrize("stage", STAGES)
def test_component_interface(stage):
    comp = component(stage)
    spec = comp.component_spec
    assert comp.name == stage.replace("_", "-")
    image = spec.implementation.container.image
    gpu = stage in ("infer", "train")
    assert image.startswith("ghcr.io/segloop/segloop-cuda:" if gpu else "ghcr.io/segloop/segloop:")
    # One JSON config parameter, typed artifacts in and out, and metrics for every stage.
    assert spec.inputs["config_json"].type == "String"
    inputs, outputs = INTERFACES[stage]
    assert {k: v.type for k, v in spec.inputs.items() if v.type.startswith("system.")} == inputs
    assert {k: v.type for k, v in spec.outputs.items()} == {**outputs, "metrics": METRICS}
    # The image has kfp installed (it is a segloop dependency): no pip install at run time.
    assert "pip install" not in " ".join(spec.implementation.container.command)


def test_scalar_metrics_flatten_numbers_only():
    result = {
        "rows": 3,
        "ok": True,
        "duration_s": 0.5,
        "strategy": "random",
        "nan": float("nan"),
        "per_class": {"crop": {"iou": 0.7}},
        "preview": [{"a": 1}],
    }
    assert scalar_metrics(result) == {
        "rows": 3.0,
        "ok": 1.0,
        "duration_s": 0.5,
        "per_class.crop.iou": 0.7,
    }
    metrics = dsl.Metrics(uri="/unused")
    log_metrics(metrics, result)
    assert metrics.metadata["per_class.crop.iou"] == 0.7


def test_bodies_chain_like_the_pipelines(tmp_path, s3, mlflow_env):
    project = tiny_project(str(tmp_path / "data"), tmp_path, images=6, seed=1)
    cfg = load_config(
        None,
        [
            *project.overrides,
            "project.name=kfpbodies",
            "select.budget=4",
            "preprocess.val_fraction=0.25",
            "preprocess.test_fraction=0.25",
        ],
    )

    def body(stage: str, config_json: str = run_config_json(cfg), **inputs):
        # config_json: what a pipeline hands its components
        return run_body(
            component(stage), tmp_path / "artifacts" / stage, config_json=config_json, **inputs
        )

    queried = body("query")
    assert queried.metrics.metadata["rows"] == 6
    records = queried.records
    predictions = body("infer", records=records, model_uri=str(project.model_dir)).predictions
    assert len(list(Path(predictions.path, "masks").glob("*.png"))) == 6
    chosen = body("select", predictions=predictions, records=records)
    assert chosen.metrics.metadata["selected"] == 4
    tasks = body("upload_cvat", predictions=chosen.selected).tasks
    assert Path(tasks.path, "tasks.json").exists()
    for task_json in (tmp_path / "annotation").glob("*/task.json"):
        task = json.loads(task_json.read_text())  # people accept the pre-annotations
        task_json.write_text(json.dumps({**task, "status": "completed"}))

    # download reads the annotation tasks that upload wrote.
    download = cfg.download_cvat.model_copy(update={"upload_dir": tasks.path})
    dataset = body(
        "download_cvat",
        config_json=run_config_json(cfg.model_copy(update={"download_cvat": download})),
    ).dataset
    assert len(list(Path(dataset.path, "masks").glob("*.png"))) == 4
    splits = body("preprocess", dataset=dataset, earlier_datasets=[]).splits
    assert Path(splits.path, "split.json").exists()
    trained = body("train", splits=splits)
    assert Path(trained.model.path, "best", "model.json").exists() and trained.metrics.metadata
    evaluated = body("evaluate", model=trained.model, splits=splits)
    html = Path(evaluated.report.path).read_text()
    assert "<img" in html and 'src="figures/' not in html  # pictures inlined for the KFP UI
    registered = body("register", evaluation=evaluated.evaluation)
    assert registered.metrics.metadata["promoted"] == 1.0  # the first version becomes champion
    assert "kfpbodies" in Path(registered.comparison.path).read_text()
    assert_loop_report(body("loop_report", dataset=dataset))


def assert_loop_report(out) -> None:
    """Round 1 is version 1, the champion; people accepted the pre-annotations unchanged."""
    html = Path(out.report.path).read_text()
    assert html == Path(out.summary.path, "loop_report.html").read_text()
    assert "<td>challenger,champion</td>" in html
    assert html.count("class='sample'") == 2 * 3  # pre-annotation and refined, 3 images
    assert out.metrics.metadata["model_version"] == 1.0
    assert out.metrics.metadata["changed_share"] == 0.0
    rounds = json.loads(Path(out.summary.path, "rounds.json").read_text())
    assert [r["model_version"] for r in rounds] == ["1"] and rounds[0]["per_class_iou"]


def test_html_report_pictures_are_inlined(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "iou.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "report.html").write_text(
        '<img src="figures/iou.png"><img src="https://example.com/x.png"><img src="gone.png">'
    )
    out = self_contained_html(tmp_path / "report.html", tmp_path / "kfp" / "report.html")
    html = out.read_text()
    assert 'src="data:image/png;base64,iVBORyBmYWtl"' in html
    assert 'src="https://example.com/x.png"' in html and 'src="gone.png"' in html
