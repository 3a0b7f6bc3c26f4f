"""Training against a real MLflow server (SQLite backend, artifacts in SeaweedFS), on CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from model_helpers import background_baseline, tiny_cfg  # tests/ is on sys.path

from components.core.checkpoint import load_checkpoint
from components.core.errors import SegloopError
from components.core.images import encode_png, load_mask
from components.core.labels import Label, LabelSet
from components.preprocess.stage import run_preprocess
from components.train.losses import balanced_weights, class_weights
from components.train.settings import TrainSettings
from components.train.stage import run_train
from pipelines.config import load_config
from pipelines.demo.toydata import write_toy_dataset


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-data")
    data = write_toy_dataset(root / "ds", n=32, seed=0, sizes=(64, 128))
    cfg = load_config(None, [f"stack.dir={root / 'stack'}", "preprocess.tile_size=64"])
    run_preprocess(cfg, inputs=[str(data)], out=str(root / "pre"))
    return root / "pre"


def test_training_learns_and_is_tracked(prepared, mlflow_env, tmp_path):
    out = tmp_path / "train"
    # The model upload to MLflow is exercised in test_register (it needs a logged model).
    cfg = tiny_cfg(tmp_path, "train.epochs=5", "train.log_model=false")
    m = run_train(cfg, data=str(prepared), out=str(out))

    baseline = background_baseline(prepared)
    assert m["epochs_run"] == 5
    assert m["best_val_mean_iou"] > baseline + 0.3, (m["best_val_mean_iou"], baseline)

    # Best and last checkpoints in the shared format.
    _, spec = load_checkpoint(out / "best")
    assert spec.classes == 3 and spec.tile_size == 64 and spec.data_hash == m["data_hash"]
    assert (out / "last" / "state.pt").is_file()

    client = MlflowClient(mlflow_env)
    run = client.get_run(m["run_id"])
    assert run.data.params["train.arch"] == "Unet"
    assert run.data.tags["segloop.split_hash"] == m["split_hash"]
    history = client.get_metric_history(m["run_id"], "val_mean_iou")
    assert [h.step for h in history] == [1, 2, 3, 4, 5]
    for name in ("train_loss", "val_loss", "lr", "val_mean_dice", "val_iou_weed"):
        assert client.get_metric_history(m["run_id"], name), name
    inputs = run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.digest == m["split_hash"][:36]
    assert "cfg.yaml" in {a.path for a in client.list_artifacts(m["run_id"])}
    epochs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5]


def test_resume_continues_the_epoch_count(prepared, mlflow_env, tmp_path):
    out = tmp_path / "train"
    quick = ["train.max_steps_per_epoch=2", "train.log_model=false"]
    first = run_train(
        tiny_cfg(tmp_path, "train.epochs=2", *quick), data=str(prepared), out=str(out)
    )
    assert (first["start_epoch"], first["last_epoch"]) == (1, 2)
    again = run_train(
        tiny_cfg(tmp_path, "train.epochs=3", *quick),
        data=str(prepared),
        out=str(out),
        resume=str(out),
    )
    assert (again["start_epoch"], again["last_epoch"], again["epochs_run"]) == (3, 3, 1)
    assert again["run_id"] == first["run_id"]
    steps = [
        h.step for h in MlflowClient(mlflow_env).get_metric_history(first["run_id"], "train_loss")
    ]
    assert steps == [1, 2, 3]
    epochs = [json.loads(x)["epoch"] for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_binary_focal_accumulation_plateau(tmp_path, mlflow_env):
    data = write_toy_dataset(tmp_path / "ds", n=8, seed=3, sizes=(64, 64))
    LabelSet(labels=[Label(name="background", id=0), Label(name="plant", id=1)]).save(
        data / "labels.json"
    )
    for path in (data / "masks").glob("*.png"):
        path.write_bytes(encode_png((load_mask(path) > 0).astype(np.uint8)))
    cfg = load_config(None, [f"stack.dir={tmp_path / 'stack'}", "preprocess.tile_size=64",
                             "preprocess.val_fraction=0.25", "preprocess.test_fraction=0"])  # fmt: skip
    run_preprocess(cfg, inputs=[str(data)], out=str(tmp_path / "pre"))
    m = run_train(
        tiny_cfg(
            tmp_path,
            "train.epochs=2",
            "train.binary=true",
            "train.loss=dice_focal",
            "train.accumulate=2",
            "train.batch_size=2",
            "train.scheduler=plateau",
            "train.log_model=false",
        ),
        data=str(tmp_path / "pre"),
        out=str(tmp_path / "train"),
    )
    _, spec = load_checkpoint(tmp_path / "train" / "best")
    assert spec.binary and [label.name for label in spec.labels] == ["background", "plant"]
    assert m["epochs_run"] == 2 and 0 <= m["best_val_mean_iou"] <= 1


def test_init_from_fine_tunes_an_earlier_model(prepared, mlflow_env, tmp_path):
    quick = ["train.epochs=1", "train.max_steps_per_epoch=1", "train.log_model=false"]
    first = tmp_path / "first"
    run_train(tiny_cfg(tmp_path, *quick), data=str(prepared), out=str(first))
    start, _ = load_checkpoint(first / "last")

    # One step at a negligible learning rate: the fine-tuned weights are the ones it started from.
    tuned = tmp_path / "tuned"
    m = run_train(
        tiny_cfg(tmp_path, *quick, "train.lr=1e-12", f"train.init_from={first / 'last'}"),
        data=str(prepared),
        out=str(tuned),
    )
    after, _ = load_checkpoint(tuned / "last")
    weights = after.state_dict()
    for name, value in start.state_dict().items():
        if value.is_floating_point() and "running" not in name:
            assert torch.allclose(weights[name], value, atol=1e-6), name
    run = MlflowClient(mlflow_env).get_run(m["run_id"])
    assert run.data.tags["segloop.init_from"] == str(first / "last")


def test_init_from_a_different_model_or_no_champion_yet(prepared, mlflow_env, tmp_path):
    quick = ["train.epochs=1", "train.max_steps_per_epoch=1", "train.log_model=false"]
    first = tmp_path / "first"
    run_train(tiny_cfg(tmp_path, *quick), data=str(prepared), out=str(first))
    other = tiny_cfg(
        tmp_path,
        *quick,
        f"train.init_from={first / 'last'}",
        extra={"model_kwargs": {"encoder_depth": 3, "decoder_channels": [16, 16, 8]}},
    )
    with pytest.raises(SegloopError, match="is a different model: model_kwargs"):
        run_train(other, data=str(prepared), out=str(tmp_path / "other"))

    # The first round of a loop: no registered model yet, so training starts from scratch.
    fresh = tiny_cfg(
        tmp_path, *quick, "train.init_from=alias:champion", "mlflow.registered_model=no-such-model"
    )
    m = run_train(fresh, data=str(prepared), out=str(tmp_path / "fresh"))
    assert "segloop.init_from" not in MlflowClient(mlflow_env).get_run(m["run_id"]).data.tags


def test_balanced_class_weights_favour_rare_classes():
    weights = balanced_weights(torch.tensor([900, 90, 10, 0]))
    share = torch.tensor([0.9, 0.09, 0.01, 0.0])
    assert weights[2] > weights[1] > weights[0]  # 1/sqrt(share): rarer weighs more
    assert weights[3] == weights[2]  # absent from the tiles: the largest weight, not infinity
    assert float((weights * share).sum()) == pytest.approx(1.0)  # the average pixel weighs 1
    assert torch.allclose(weights[:3] / weights[0], (share[0] / share[:3]).sqrt())


def test_class_weights_settings_are_checked():
    s = TrainSettings(class_weights=[1.0, 2.0])
    with pytest.raises(SegloopError, match="has 2 weights, the labels have 3 classes"):
        class_weights(s, 3, lambda: None)
    with pytest.raises(SegloopError, match="dice_focal has none"):
        class_weights(TrainSettings(class_weights="balanced", loss="dice_focal"), 3, lambda: None)
    assert class_weights(TrainSettings(), 3, lambda: 1 / 0) is None  # counts only when asked
    fixed = class_weights(TrainSettings(class_weights=[1, 2, 3]), 3, lambda: None)
    assert fixed.tolist() == [1.0, 2.0, 3.0]


def test_training_with_balanced_class_weights(prepared, mlflow_env, tmp_path, caplog):
    quick = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.log_model=false"]
    with caplog.at_level("INFO", logger="components.train.stage"):
        run_train(
            tiny_cfg(tmp_path, *quick, "train.class_weights=balanced"),
            data=str(prepared),
            out=str(tmp_path / "weighted"),
        )
    (line,) = [r.message for r in caplog.records if "class weights" in r.message]
    weights = json.loads(line.split("weights ")[1])
    assert len(weights) == 3 and weights[0] < min(weights[1:])  # background is the common class


def test_keep_last_makes_the_final_epoch_the_model(prepared, mlflow_env, tmp_path):
    quick = ["train.epochs=3", "train.max_steps_per_epoch=1", "train.log_model=false"]
    out = tmp_path / "kept"
    run_train(tiny_cfg(tmp_path, *quick, "train.keep=last"), data=str(prepared), out=str(out))
    best, _ = load_checkpoint(out / "best")
    last, _ = load_checkpoint(out / "last")
    for name, value in last.state_dict().items():
        assert torch.equal(best.state_dict()[name], value), name
