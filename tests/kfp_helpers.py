"""What the KFP tests share (test_kfp_components, test_kfp_local, test_infer_shards): a tiny
project (a synthetic image DB, a tiny untrained Unet for its labels, config overrides that keep
every stage small and on the CPU), and `run_body`, which calls a component's body as KFP's
local runner does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kfp import dsl

from components.core.checkpoint import save_checkpoint
from components.core.labels import LabelSet
from components.core.model import ModelSpec, build_from_spec
from pipelines.demo.synthetic import make_dataset


@dataclass
class TinyProject:
    data: Any  # what make_dataset returns (labels_uri, ...)
    model_dir: Path  # an untrained checkpoint, the seed model to pre-annotate with
    overrides: list[str]  # data, DB, outputs, folder annotation backend, small CPU stages


def tiny_project(data_root: str, tmp_path: Path, images: int, seed: int) -> TinyProject:
    """`images` 64 px images under `data_root` with their image DB in tmp_path/images.db, a
    seed model in tmp_path/seed-model, outputs in tmp_path/runs, annotation in
    tmp_path/annotation. Add project.name, select.budget and the split fractions."""
    data = make_dataset(
        data_root,
        images,
        seed=seed,
        db_url=f"sqlite:///{tmp_path / 'images.db'}",
        table="images",
        size=(64, 64),
    )
    labels = LabelSet.load(data.labels_uri)
    spec = ModelSpec(
        arch="Unet",
        encoder_name="resnet18",
        classes=len(labels.labels),
        labels=labels.labels,
        model_kwargs={"decoder_channels": [8, 8, 8, 8, 8]},
        tile_size=64,
    )
    model_dir = tmp_path / "seed-model"
    save_checkpoint(build_from_spec(spec).eval(), spec, model_dir)
    overrides = [
        f"project.labels={data.labels_uri}",
        f"db.url=sqlite:///{tmp_path / 'images.db'}",
        f"io.out_root={tmp_path / 'runs'}",
        "cvat.backend=folder",
        f"cvat.folder={tmp_path / 'annotation'}",
        "infer.device=cpu",
        "infer.num_workers=0",
        "preprocess.tile_size=64",
        "preprocess.workers=1",
        "train.epochs=1",
        "train.batch_size=4",
        "train.workers=0",
        "train.device=cpu",
        "train.model_kwargs={decoder_channels: [8, 8, 8, 8, 8]}",
        "evaluate.device=cpu",
    ]
    return TinyProject(data, model_dir, overrides)


# KFP's artifact classes by the schema title an output declares ("system.Dataset@0.0.1").
ARTIFACT_CLASSES = {
    cls.schema_title: cls for cls in (dsl.Dataset, dsl.Model, dsl.Metrics, dsl.HTML, dsl.Markdown)
}


def artifact(path: Path, cls: type = dsl.Dataset) -> dsl.Artifact:
    """An artifact as KFP hands it to a component body: a local path for a local URI."""
    return cls(uri=str(path))


def run_body(
    task, root: Path, *, at: dict[str, Path] | None = None, **inputs: Any
) -> SimpleNamespace:
    """Call `task`'s body (`.python_func`) with `inputs`, and each output the spec declares a
    fresh artifact of its class at root/<output name> (or where `at` puts it); returns the
    outputs by name."""
    at = at or {}
    outputs = {
        name: artifact(at.get(name, root / name), ARTIFACT_CLASSES[spec.type.split("@")[0]])
        for name, spec in task.component_spec.outputs.items()
    }
    task.python_func(**inputs, **outputs)
    return SimpleNamespace(**outputs)
