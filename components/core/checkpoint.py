"""Checkpoints: a folder with `model.pt` (state dict) and `model.json` (`ModelSpec`).

API (stable; train, evaluate, register and infer use it):

- `save_checkpoint(model, spec, uri)`: write `model.pt` + `model.json` to a local folder or an
  `s3://` prefix.
- `load_checkpoint(uri, device="cpu", tracking_uri=None) -> (model, spec)`: from any model URI
  (below). Weights
  load with `torch.load(weights_only=True)` (a checkpoint is data, never code) and must match
  `model.json` exactly; a mismatch is a SegloopError naming the keys/shapes that differ.
- `resolve_model_uri(uri, dst=None, tracking_uri=None) -> Path`: a local checkpoint folder for
  any model URI.
- `log_checkpoint_to_mlflow(model, spec, ckpt_dir, name="model") -> ModelInfo`: inside an active
  MLflow run, `mlflow.pytorch.log_model(..., name=name)` with `model.json` and `model.pt` as
  extra files, so that `models:/...` and `runs:/...` URIs resolve to a checkpoint folder.

Model URIs: a local folder (or `file://`), its `model.pt`/`model.json` file, `s3://bucket/prefix`,
`models:/<name>@<alias>`, `models:/<name>/<version>`, `models:/m-<model id>`,
`runs:/<run id>/<path>`, `mlflow-artifacts:/...`.

MLflow URIs resolve on the tracking server `tracking_uri` (segloop's stages pass
`components.core.tracking.tracking_uri(cfg)`); when it is None, `$MLFLOW_TRACKING_URI` or a URI
set with `mlflow.set_tracking_uri`, and with neither a SegloopError: never MLflow's own default,
an `mlflow.db` in the current folder. A server that does not answer is "cannot reach MLflow at
<url>" within seconds (`tracking.ensure_reachable`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from components.core import storage
from components.core.errors import SegloopError
from components.core.model import ModelSpec, build_from_spec

WEIGHTS = "model.pt"
SPEC = "model.json"
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


# ---------------------------------------------------------------- save


def save_checkpoint(model: torch.nn.Module, spec: ModelSpec, uri: str | Path) -> str:
    """Write `model.pt` and `model.json` into folder `uri` (local or s3://); returns `uri`."""
    uri = str(uri)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with storage.output_dir(uri, resume=False) as folder:
        with storage.atomic_path(folder / WEIGHTS) as tmp:
            torch.save(state, tmp)
        with storage.atomic_path(folder / SPEC) as tmp:
            tmp.write_text(spec.model_dump_json(indent=2) + "\n")
    return uri


# ---------------------------------------------------------------- resolve any model URI


def is_mlflow_uri(uri: str) -> bool:
    return str(uri).startswith(MLFLOW_SCHEMES)


def _find_checkpoint(root: Path, uri: str) -> Path:
    """The folder under `root` that holds model.json (root, extra_files/, or one match below)."""
    if (root / SPEC).is_file():
        return root
    found = sorted(p.parent for p in root.rglob(SPEC))
    if len(found) == 1:
        return found[0]
    if not found:
        raise SegloopError(
            f"{uri} has no {SPEC}: it is not a segloop checkpoint (a folder with {WEIGHTS} + "
            f"{SPEC}, or an MLflow model logged with log_checkpoint_to_mlflow)"
        )
    raise SegloopError(
        f"{uri} holds several checkpoints ({', '.join(str(p.relative_to(root)) for p in found)}); "
        "point the URI at one of them"
    )


def resolve_model_uri(
    uri: str | Path, dst: str | Path | None = None, tracking_uri: str | None = None
) -> Path:
    """A local checkpoint folder for `uri`; remote ones are downloaded into `dst` (or a temp dir).
    MLflow URIs resolve on `tracking_uri` (see the module docstring)."""
    uri = str(uri)
    if not uri:
        raise SegloopError("no model URI given (set infer.model or pass --model)")
    if not (is_mlflow_uri(uri) or storage.is_s3(uri)):
        path = storage.local_path(uri)
        if path.is_file() and path.name in (WEIGHTS, SPEC):
            path = path.parent
        if not path.exists():
            raise SegloopError(f"model {uri}: no such file or folder")
        return _find_checkpoint(path, uri)
    server = _tracking_server(uri, tracking_uri) if is_mlflow_uri(uri) else None
    target = Path(dst) if dst else Path(tempfile.mkdtemp(prefix="segloop-model-"))
    target.mkdir(parents=True, exist_ok=True)
    if storage.is_s3(uri):
        base = uri[: -len(WEIGHTS)] if uri.endswith("/" + WEIGHTS) else uri
        base = base[: -len(SPEC)] if base.endswith("/" + SPEC) else base
        if not storage.download_dir(base, target):
            raise SegloopError(f"model {uri}: nothing under that S3 prefix")
        return _find_checkpoint(target, uri)
    return _find_checkpoint(_download_mlflow(uri, target, server), uri)


def _tracking_server(uri: str, tracking_uri: str | None) -> str:
    """The tracking server an MLflow model URI resolves on: the given one, else the environment
    or an explicit `mlflow.set_tracking_uri`; never MLflow's fallback (./mlflow.db)."""
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    import mlflow
    from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

    if is_tracking_uri_set():
        return mlflow.get_tracking_uri()
    raise SegloopError(
        f"model {uri} is in MLflow, but no tracking server is set: set mlflow.tracking_uri in "
        "the config or MLFLOW_TRACKING_URI (or pass tracking_uri to load_checkpoint)"
    )


def _artifact_uri(uri: str, client) -> str:
    """Where the files of a `models:/` or `runs:/` URI are, asked through `client` (bound to the
    configured server). MLflow's own resolution of these URIs consults its process-wide registry
    URI on the way (MLflow 3.x), whatever tracking URI it is given; this does not."""
    if uri.startswith("runs:/"):
        return _run_artifact_uri(uri, client)
    if not uri.startswith("models:/"):
        return uri
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    base, path = ModelsArtifactRepository.split_models_uri(uri)
    found = get_model_name_and_version(client, base)
    if len(found) == 1:  # models:/m-<id>: a logged model
        location = client.get_logged_model(found[0]).artifact_location
    else:
        location = client.get_model_version_download_uri(*found)
    return f"{location.rstrip('/')}/{path}" if path else location


def _run_artifact_uri(uri: str, client) -> str:
    """`runs:/<run>/<name>[/path]`: the model named `name` that the run logged (MLflow 3 keeps
    logged models apart from run artifacts), else the run's own artifact at that path."""
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    run_id, path = RunsArtifactRepository.parse_runs_uri(uri)
    run = client.get_run(run_id)
    if path:
        name, _, rest = path.partition("/")
        token = None
        while True:
            page = client.search_logged_models(
                experiment_ids=[run.info.experiment_id],
                filter_string=f"name = '{name}'",
                page_token=token,
            )
            for logged in page:
                if logged.source_run_id == run_id:
                    location = logged.artifact_location.rstrip("/")
                    return f"{location}/{rest}" if rest else location
            token = page.token
            if not token:
                break
    root = run.info.artifact_uri.rstrip("/")
    return f"{root}/{path}" if path else root


def _unreachable(exc: BaseException) -> bool:
    """Whether an MLflow error is a connection failure (not an answer from the server)."""
    import requests

    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, requests.ConnectionError | requests.Timeout):
            return True
        seen = seen.__cause__ or seen.__context__
    return "Max retries exceeded with url" in str(exc)


def _download_mlflow(uri: str, target: Path, server: str) -> Path:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from components.core.tracking import ensure_reachable

    ensure_reachable(server)
    client = MlflowClient(tracking_uri=server)
    try:
        source = _artifact_uri(uri, client)
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(target), tracking_uri=server
            )
        )
    except MlflowException as exc:
        if _unreachable(exc):  # the server went away after answering ensure_reachable
            raise SegloopError(
                f"cannot reach MLflow at {server} while fetching model {uri}: "
                f"{str(exc.message if hasattr(exc, 'message') else exc)[:300]}"
            ) from exc
        raise SegloopError(
            f"cannot fetch model {uri} from MLflow at {server}: "
            f"{exc.message if hasattr(exc, 'message') else exc}; check the name, alias or "
            "version (`mlflow models` / the MLflow UI) and mlflow.tracking_uri / "
            "MLFLOW_TRACKING_URI"
        ) from exc
    except OSError as exc:
        raise SegloopError(f"cannot fetch model {uri} from MLflow at {server}: {exc}") from exc


# ---------------------------------------------------------------- load


def read_spec(folder: str | Path) -> ModelSpec:
    path = Path(folder) / SPEC
    try:
        return ModelSpec.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise SegloopError(f"{path}: missing; a checkpoint needs {SPEC} beside {WEIGHTS}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SegloopError(f"{path} is not a valid model description: {problems}") from None


def _check_state(state: Any, model: torch.nn.Module, folder: Path, spec: ModelSpec) -> None:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SegloopError(f"{folder / WEIGHTS} is not a state dict of tensors")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise SegloopError(
            f"{folder}: {WEIGHTS} does not match {SPEC} ({spec.arch}/{spec.encoder_name}, "
            f"{spec.classes} classes): " + "; ".join(parts) + ". Re-export the checkpoint with "
            "save_checkpoint, or fix model.json to describe the model that produced the weights"
        )


def load_checkpoint(
    uri: str | Path, device: str | torch.device = "cpu", tracking_uri: str | None = None
) -> tuple[torch.nn.Module, ModelSpec]:
    """Rebuild the model described by `model.json` and load `model.pt` (weights only), eval mode.
    MLflow URIs resolve on `tracking_uri` (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="segloop-model-") as tmp:
        folder = resolve_model_uri(uri, tmp, tracking_uri)
        spec = read_spec(folder)
        model = build_from_spec(spec)
        try:
            state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise SegloopError(f"{folder / WEIGHTS}: missing weights file") from None
        except Exception as exc:  # torch raises several types for corrupt / unsafe pickles
            raise SegloopError(
                f"{uri}: cannot load {WEIGHTS} as weights-only data ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); it must be a plain state dict"
            ) from exc
    _check_state(state, model, folder, spec)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), spec


# ---------------------------------------------------------------- MLflow


def log_checkpoint_to_mlflow(
    model: torch.nn.Module, spec: ModelSpec, ckpt_dir: str | Path, name: str = "model", **kwargs
):
    """Log the model in the active MLflow run with the checkpoint files beside it.

    `ckpt_dir` is a local checkpoint folder written by `save_checkpoint` (its files become the
    logged model's `extra_files/`). Extra `kwargs` go to `mlflow.pytorch.log_model`
    (e.g. `registered_model_name`, `metadata`). Returns MLflow's `ModelInfo`.
    """
    import mlflow.pytorch

    folder = Path(ckpt_dir)
    for needed in (WEIGHTS, SPEC):
        if not (folder / needed).is_file():
            raise SegloopError(f"{folder / needed}: missing; call save_checkpoint first")
    if mlflow.active_run() is None:
        raise SegloopError("log_checkpoint_to_mlflow needs an active MLflow run (mlflow.start_run)")
    metadata = {"segloop_spec": json.loads(spec.model_dump_json()), **kwargs.pop("metadata", {})}
    with _pickle_warning_muted():
        return _log_model(model, folder, name, metadata, **kwargs)


@contextlib.contextmanager
def _pickle_warning_muted():
    """MLflow 3 warns on every pickled PyTorch model and recommends "pt2". segloop keeps the
    pickle copy on purpose: segloop never loads it (it reads the weights-only model.pt beside
    it), while "pt2" would add a torch.export trace of every architecture to each training run.
    The warning says nothing a user can act on, so it stays out of their output."""
    pytorch_log = logging.getLogger("mlflow.pytorch")

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Saving pytorch model by Pickle")

    pytorch_log.addFilter(keep)
    try:
        yield
    finally:
        pytorch_log.removeFilter(keep)


def _log_model(model: torch.nn.Module, folder: Path, name: str, metadata: dict, **kwargs):
    import mlflow.pytorch

    return mlflow.pytorch.log_model(
        model,
        name=name,
        extra_files=[str(folder / SPEC), str(folder / WEIGHTS)],
        metadata=metadata,
        pip_requirements=kwargs.pop("pip_requirements", ["torch", "segmentation-models-pytorch"]),
        # MLflow's own copy (for mlflow.pytorch.load_model users); segloop itself only reads the
        # weights-only model.pt. "pt2" would need a traced example and fix the input size.
        serialization_format=kwargs.pop("serialization_format", "pickle"),
        **kwargs,
    )
