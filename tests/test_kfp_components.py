"""The KFP components: their interfaces (typed artifacts, images) and their bodies, called
directly through `.python_func` with small inputs, in the order the pipelines chain them."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from kfp import dsl
from kfp_helpers import tiny_project  # tests/ is on sys.path (rootdir-relative imports)

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
MODULES = {"loop_report": "report"}  # stages whose package is named otherwise


def component(stage: str):
    module = importlib.import_module(f"components.{MODULES.get(stage, stage)}.component")
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


def art(cls, path: Path):
    """An artifact as KFP hands it to a component body (a local path for a local URI)."""
    return cls(uri=str(path))


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
    config_json = run_config_json(cfg)  # what a pipeline hands its components
    a = tmp_path / "artifacts"
    m = {stage: art(dsl.Metrics, a / f"{stage}-metrics") for stage in STAGES}

    records = art(dsl.Dataset, a / "records")
    component("query").python_func(config_json=config_json, records=records, metrics=m["query"])
    assert m["query"].metadata["rows"] == 6

    predictions = art(dsl.Dataset, a / "predictions")
    component("infer").python_func(
        config_json=config_json,
        records=records,
        model_uri=str(project.model_dir),
        predictions=predictions,
        metrics=m["infer"],
    )
    assert len(list(Path(predictions.path, "masks").glob("*.png"))) == 6

    selected = art(dsl.Dataset, a / "selected")
    component("select").python_func(
        config_json=config_json,
        predictions=predictions,
        records=records,
        selected=selected,
        metrics=m["select"],
    )
    assert m["select"].metadata["selected"] == 4

    tasks = art(dsl.Dataset, a / "tasks")
    component("upload_cvat").python_func(
        config_json=config_json, predictions=selected, tasks=tasks, metrics=m["upload_cvat"]
    )
    assert Path(tasks.path, "tasks.json").exists()
    for task_json in (tmp_path / "annotation").glob("*/task.json"):
        task = json.loads(task_json.read_text())  # people accept the pre-annotations
        task_json.write_text(json.dumps({**task, "status": "completed"}))

    download_cfg = run_config_json(
        cfg.model_copy(
            update={
                "download_cvat": cfg.download_cvat.model_copy(update={"upload_dir": tasks.path})
            }
        )
    )
    dataset = art(dsl.Dataset, a / "dataset")
    component("download_cvat").python_func(
        config_json=download_cfg, dataset=dataset, metrics=m["download_cvat"]
    )
    assert len(list(Path(dataset.path, "masks").glob("*.png"))) == 4

    splits = art(dsl.Dataset, a / "splits")
    component("preprocess").python_func(
        config_json=config_json,
        dataset=dataset,
        splits=splits,
        metrics=m["preprocess"],
        earlier_datasets=[],
    )
    assert Path(splits.path, "split.json").exists()

    model = art(dsl.Model, a / "model")
    component("train").python_func(
        config_json=config_json, splits=splits, model=model, metrics=m["train"]
    )
    assert Path(model.path, "best", "model.json").exists()
    assert m["train"].metadata

    evaluation = art(dsl.Dataset, a / "evaluation")
    report = art(dsl.HTML, a / "report.html")
    component("evaluate").python_func(
        config_json=config_json,
        model=model,
        splits=splits,
        evaluation=evaluation,
        report=report,
        metrics=m["evaluate"],
    )
    html = Path(report.path).read_text()
    assert "<img" in html and 'src="figures/' not in html  # pictures inlined for the KFP UI

    registration = art(dsl.Dataset, a / "registration")
    comparison = art(dsl.Markdown, a / "comparison.md")
    component("register").python_func(
        config_json=config_json,
        evaluation=evaluation,
        registration=registration,
        comparison=comparison,
        metrics=m["register"],
    )
    assert m["register"].metadata["promoted"] == 1.0  # the first version becomes champion
    assert "kfpbodies" in Path(comparison.path).read_text()

    summary = art(dsl.Dataset, a / "loop-summary")
    loop = art(dsl.HTML, a / "loop_report.html")
    component("loop_report").python_func(
        config_json=config_json,
        dataset=dataset,
        summary=summary,
        report=loop,
        metrics=m["loop_report"],
    )
    html = Path(loop.path).read_text()
    assert html == Path(summary.path, "loop_report.html").read_text()
    # Round 1 is version 1, the champion; people accepted the pre-annotations unchanged.
    assert "<td>challenger,champion</td>" in html
    assert html.count("class='sample'") == 2 * 3  # pre-annotation and refined, 3 images
    assert m["loop_report"].metadata["model_version"] == 1.0
    assert m["loop_report"].metadata["changed_share"] == 0.0
    rounds = json.loads(Path(summary.path, "rounds.json").read_text())
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
