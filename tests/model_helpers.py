"""Tiny models for tests that train, evaluate and register: the model, its training config, and
a real registered-model evaluation to build on."""

from __future__ import annotations

import json
import shutil
import uuid

import numpy as np
import pytest

from components.core.images import load_mask
from pipelines.config import load_config

# The model part: a Unet whose resnet18 encoder is cut to 3 stages.
TINY_MODEL = {"model_kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}}

# A small Unet (resnet18 encoder cut to 3 stages) learns the toy blobs in a few CPU epochs.
TINY = {
    "train": {
        "encoder_name": "resnet18",
        **TINY_MODEL,
        "pad_divisor": 8,
        "lr": 0.005,
        "batch_size": 8,
        "workers": 0,
        "seed": 0,
        # fp32 on every machine: amp=auto trains in bf16 on CPUs with native bf16 (AMX,
        # AVX512-BF16), which would make the learned scores depend on the CPU.
        "amp": "off",
    }
}


def tiny_cfg(tmp_path, *overrides: str, extra: dict | None = None):
    merged = json.loads(json.dumps(TINY))
    for key, value in (extra or {}).items():
        merged["train"][key] = value
    return load_config(
        None,
        [f"stack.dir={tmp_path / 'stack'}", "mlflow.experiment=test-train", *overrides],
        extra=merged,
    )


def background_baseline(pre) -> float:
    """Mean IoU of predicting background everywhere on the val tiles."""
    counts = np.zeros(3)
    for path in (pre / "val" / "masks").glob("*.png"):
        m = load_mask(path)
        counts += np.bincount(m[m != 255].ravel(), minlength=3)[:3]
    present = (counts > 0).sum()
    return float(counts[0] / counts.sum() / present)


def registry_cfg(tmp_path, name: str, *more: str):
    overrides = [
        f"stack.dir={tmp_path / 'stack'}",
        "mlflow.experiment=test-register",
        f"mlflow.registered_model={name}",
        "preprocess.tile_size=64",
        "preprocess.test_fraction=0.3",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
        "train.workers=0",
        "train.pad_divisor=8",
        "register.min_improvement=0.01",
        *more,
    ]
    return load_config(None, overrides, extra={"train": TINY_MODEL}), overrides


@pytest.fixture
def evaluated(tmp_path, mlflow_env):
    """A real model: trained, logged to MLflow, evaluated on the test split."""
    # Here, not at the top: conftest imports this fixture, and every test session would load
    # torch and MLflow before collecting.
    from components.evaluate.stage import run_evaluate
    from components.preprocess.stage import run_preprocess
    from components.train.stage import run_train
    from pipelines.demo.toydata import write_toy_dataset

    name = f"reg-{uuid.uuid4().hex[:8]}"
    cfg, overrides = registry_cfg(tmp_path, name)
    data = write_toy_dataset(tmp_path / "ds", n=10, seed=21, sizes=(64, 96))
    run_preprocess(cfg, inputs=[str(data)], out=str(tmp_path / "pre"))
    run_train(cfg, data=str(tmp_path / "pre"), out=str(tmp_path / "train"))
    run_evaluate(
        cfg, model=str(tmp_path / "train"), data=str(tmp_path / "pre"), out=str(tmp_path / "e1")
    )
    return cfg, overrides, name, tmp_path


def evaluation_variant(src, dst, **changes):
    """A copy of a real evaluation with chosen numbers. The promotion rule is a function of
    the evaluation's mean IoU and split hash, so this is how better, worse and other-split
    challengers are made without training three more models."""
    shutil.copytree(src, dst)
    metrics = json.loads((dst / "metrics.json").read_text())
    metrics.update(changes)
    (dst / "metrics.json").write_text(json.dumps(metrics))
    return dst
