"""Checkpoint save/load round trips: local path, SeaweedFS over S3, a real MLflow server."""

from pathlib import Path

import pytest
import torch

from components.core.checkpoint import (
    load_checkpoint,
    log_checkpoint_to_mlflow,
    resolve_model_uri,
    save_checkpoint,
)
from components.core.errors import SegloopError
from components.core.labels import Label
from components.core.model import ModelSpec, build_from_spec

LABELS = [Label(name="background", id=0), Label(name="plant", id=1, color="#00ff00")]


def tiny(classes: int = 2) -> tuple[torch.nn.Module, ModelSpec]:
    spec = ModelSpec(
        arch="Unet",
        encoder_name="resnet18",
        classes=classes,
        labels=LABELS if classes <= 2 else [*LABELS, Label(name="weed", id=2)],
        model_kwargs={"decoder_channels": [8, 8, 8, 8, 8]},
        tile_size=64,
        data_hash="sha256:test",
    )
    torch.manual_seed(0)
    return build_from_spec(spec).eval(), spec


def same_output(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return torch.allclose(a.eval()(x), b.eval()(x), atol=1e-6)


def test_local_round_trip(tmp_path):
    model, spec = tiny()
    save_checkpoint(model, spec, tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"model.pt", "model.json"}
    for uri in (tmp_path / "ckpt", f"file://{tmp_path}/ckpt", tmp_path / "ckpt" / "model.pt"):
        loaded, loaded_spec = load_checkpoint(uri)
        assert loaded_spec == spec
        assert same_output(model, loaded)


def test_spec_that_does_not_match_weights_is_explained(tmp_path):
    model, spec = tiny(classes=2)
    save_checkpoint(model, spec, tmp_path / "ckpt")
    wrong = spec.model_copy(update={"classes": 3, "labels": [*LABELS, Label(name="weed", id=2)]})
    (tmp_path / "ckpt" / "model.json").write_text(wrong.model_dump_json())
    with pytest.raises(SegloopError, match=r"model.pt does not match model.json .*shape mismatch"):
        load_checkpoint(tmp_path / "ckpt")


def test_pickled_code_is_refused(tmp_path):
    model, spec = tiny()
    save_checkpoint(model, spec, tmp_path / "ckpt")
    torch.save(model, tmp_path / "ckpt" / "model.pt")  # a whole pickled module, not data
    with pytest.raises(SegloopError, match="weights-only"):
        load_checkpoint(tmp_path / "ckpt")


def test_missing_and_non_checkpoint_paths(tmp_path):
    with pytest.raises(SegloopError, match="no such file"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegloopError, match="has no model.json"):
        load_checkpoint(tmp_path / "empty")


def test_s3_round_trip(s3, tmp_path):
    model, spec = tiny()
    uri = f"s3://{s3.bucket}/models/ckpt-1"
    save_checkpoint(model, spec, uri)
    loaded, loaded_spec = load_checkpoint(uri)
    assert loaded_spec == spec and same_output(model, loaded)
    loaded, _ = load_checkpoint(uri + "/model.json")
    assert same_output(model, loaded)
    with pytest.raises(SegloopError, match="nothing under that S3 prefix"):
        load_checkpoint(f"s3://{s3.bucket}/models/missing")


def test_mlflow_round_trip_by_alias_version_and_run(mlflow_env, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    model, spec = tiny()
    save_checkpoint(model, spec, tmp_path / "ckpt")
    mlflow.set_experiment("segloop-checkpoint-test")
    with mlflow.start_run() as run:
        info = log_checkpoint_to_mlflow(model, spec, tmp_path / "ckpt", name="model")
    version = mlflow.register_model(info.model_uri, "ckpt-test")
    client = MlflowClient()
    client.set_registered_model_alias("ckpt-test", "champion", version.version)

    for uri in (
        "models:/ckpt-test@champion",
        f"models:/ckpt-test/{version.version}",
        info.model_uri,
        f"runs:/{run.info.run_id}/model",
    ):
        folder = resolve_model_uri(uri, tmp_path / "dl" / str(abs(hash(uri))))
        assert (Path(folder) / "model.json").is_file() and (Path(folder) / "model.pt").is_file()
        loaded, loaded_spec = load_checkpoint(uri)
        assert loaded_spec == spec and same_output(model, loaded), uri

    with pytest.raises(SegloopError, match="cannot fetch model models:/ckpt-test@nope"):
        load_checkpoint("models:/ckpt-test@nope")


def test_mlflow_uri_without_a_tracking_server_is_refused_not_defaulted(tmp_path, monkeypatch):
    """No server given, none in the environment or set in-process: a clear error, not MLflow's
    default (an empty ./mlflow.db that "has no such model")."""
    from mlflow.tracking._tracking_service import utils as mlflow_tracking_utils

    monkeypatch.setattr(mlflow_tracking_utils, "_tracking_uri", None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    for uri in ("models:/m@champion", "runs:/0123456789abcdef/model"):
        with pytest.raises(SegloopError, match="no tracking server is set"):
            load_checkpoint(uri)
    assert not list(tmp_path.iterdir()), "MLflow's default store was created"


def test_mlflow_server_down_is_cannot_reach(tmp_path, monkeypatch):
    from pipelines.stack.processes import HOST, free_port

    monkeypatch.chdir(tmp_path)
    down = f"http://{HOST}:{free_port()}"
    with pytest.raises(SegloopError, match=f"cannot reach MLflow at {down}"):
        load_checkpoint("models:/m@champion", tracking_uri=down)
    assert not list(tmp_path.iterdir())
