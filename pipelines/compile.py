"""Compile a pipeline to KFP IR YAML (what CI builds and `segloop submit` uploads).

`check_no_credentials` is the one check, shared by `compile`, `submit`, `deploy` and `launch`,
that keeps credentials out of what travels in clear text (the YAML, `config_json` and the
other run parameters): they belong in the Kubernetes Secrets listed under `kfp.env_from`.
"""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path
from typing import Any

from components.core.errors import SegloopError
from components.core.redact import is_reference, is_secret_key, secret_shapes
from pipelines.config import SegloopConfig


def _literal(value: Any) -> bool:
    """A scalar that may be a secret's value: not empty, not a flag, not a path to a file."""
    if value is None or isinstance(value, bool | dict | list | tuple):
        return False
    return value != "" and not (isinstance(value, str) and is_reference(value))


def secret_value(name: str, value: Any) -> str | None:
    """Why `value` under the setting `name` is a credential (None when it is not): a string, a
    number or a list of them under a name that says secret (a path points at the secret, it is
    not one), or a string that shows one by its shape (`redact.secret_shapes`: a URL's
    password anywhere in it, `?api_key=`, `sig=`, `password=...`, an Authorization header)."""
    values = value if isinstance(value, list | tuple) else [value]
    if is_secret_key(name) and any(_literal(v) for v in values):
        return "a value under a name that says it is a secret"
    if isinstance(value, str):
        return "; ".join(secret_shapes(value)) or None
    return None


def find_credentials(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(setting path, why) for every credential in `data` (`secret_value`), through dicts and
    lists: the path says where it is, never what it is."""
    if isinstance(data, dict):
        entries = [(f"{prefix}.{k}".lstrip("."), str(k), v) for k, v in data.items()]
    elif isinstance(data, list | tuple):
        entries = [(f"{prefix}[{i}]", "", v) for i, v in enumerate(data)]
    else:
        entries = [(prefix, "", data)]
    found: list[tuple[str, str]] = []
    for path, name, value in entries:
        why = secret_value(name, value)
        if why:
            found.append((path, why))
        elif isinstance(value, dict | list | tuple):
            found += find_credentials(value, path)
    return found


def _secret_for(key: str, cfg: SegloopConfig) -> str:
    """Where the credential under `key` belongs instead."""
    secrets = cfg.kfp.env_from
    section = key.split(".", 1)[0].split("[", 1)[0]
    if key == "db.url" or section == "db":
        return (
            "remove it and give the database password to the pods from a Kubernetes Secret "
            "listed under kfp.env_from.extra (PGPASSWORD for PostgreSQL, e.g. "
            "{name: segloop-db, keys: [PGPASSWORD], stages: [query]})"
        )
    if section == "mlflow":
        return (
            f"remove it; the Secret {secrets.mlflow.name} (kfp.env_from.mlflow) carries "
            "MLFLOW_TRACKING_URI (without the password), MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD"
        )
    if section == "cvat":
        return (
            f"remove it; the Secret {secrets.cvat.name} (kfp.env_from.cvat) carries CVAT_HOST "
            "(without the password), CVAT_USERNAME and CVAT_PASSWORD, or CVAT_ACCESS_TOKEN"
        )
    if key == "kfp.host":
        return "remove it; authenticate with --token ($KFP_TOKEN) or --sa-token-path"
    if section == "io" or "s3" in key.lower() or "aws" in key.lower():
        return (
            f"remove it; the Secret {secrets.s3.name} (kfp.env_from.s3) carries "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    return "remove it and give it to the pods from a Kubernetes Secret (kfp.env_from.extra)"


def check_no_credentials(cfg: SegloopConfig, params: dict[str, Any] | None = None) -> None:
    """Refuse a config (and run parameters) holding credentials, in one line that names the
    setting, never the value: the config is compiled into the pipeline YAML and sent as the
    run's `config_json`, both in clear text."""
    found = find_credentials(cfg.model_dump(mode="json"))
    found += [(f"parameter {k}", why) for k, why in find_credentials(params or {})]
    if not found:
        return
    (key, why), rest = found[0], [k for k, _ in found[1:]]
    also = f" (also: {', '.join(rest)})" if rest else ""
    raise SegloopError(
        f"{key} holds a credential ({why}), which would be written in clear text into the "
        f"pipeline YAML and the run's parameters; {_secret_for(key, cfg)}{also}"
    )


# ---------------------------------------------------------------- compile-time settings

# `kfp` keys that are not compiled into a pipeline: where submit/launch go and where `run` writes.
NOT_COMPILED = {"host", "namespace", "experiment", "local_root"}
# Marks the compile-time `kfp` settings that `upload` writes into the pipeline's and the
# version's descriptions (`launch` compares them with its own config).
KFP_MARK = "segloop-kfp: "
_UNSET = object()


def compiled_kfp(cfg: SegloopConfig) -> dict[str, Any]:
    """The `kfp` settings compiled into a pipeline's tasks (images, GPU placement, resources,
    Secret names, env, pod labels, caching, retries, pipeline root), as plain JSON data."""
    # Without None: an unset field (a stage's default resources) and an absent one compile alike.
    return cfg.kfp.model_dump(mode="json", exclude=NOT_COMPILED, exclude_none=True)


def kfp_fingerprint(cfg: SegloopConfig) -> str:
    """`compiled_kfp` as one short line for a description (it travels in the upload's URL):
    compact JSON, zlib, URL-safe base64. It holds Secret names and plain values only
    (`check_no_credentials` refuses credentials before anything is compiled)."""
    data = json.dumps(compiled_kfp(cfg), sort_keys=True, separators=(",", ":")).encode()
    return KFP_MARK + base64.urlsafe_b64encode(zlib.compress(data, 9)).decode()


def read_fingerprint(text: str | None) -> dict[str, Any] | None:
    """The compile-time `kfp` settings recorded in a description, or None when it holds none."""
    if not text or KFP_MARK not in text:
        return None
    encoded = (text.split(KFP_MARK, 1)[1].split() or [""])[0]
    try:
        data = json.loads(zlib.decompress(base64.urlsafe_b64decode(encoded)))
    except (ValueError, zlib.error):
        return None
    return data if isinstance(data, dict) else None


def _flat(data: Any, prefix: str) -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}.{key}"))
        return out
    return {prefix: data}


def _shown(value: Any) -> str:
    return "unset" if value is _UNSET else json.dumps(value)


def kfp_differences(compiled: dict[str, Any], cfg: SegloopConfig) -> list[str]:
    """`kfp.<key>: compiled <a>, this config <b>` for every compile-time key that differs."""
    old, new = _flat(compiled, "kfp"), _flat(compiled_kfp(cfg), "kfp")
    return [
        f"{key}: compiled {_shown(old.get(key, _UNSET))}, "
        f"this config {_shown(new.get(key, _UNSET))}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, _UNSET) != new.get(key, _UNSET)
    ]


# ---------------------------------------------------------------- compile


def compile_pipeline(name: str, cfg: SegloopConfig, output: str | Path) -> Path:
    """Write pipeline `name`, built from `cfg`, to `output` (parent folders created)."""
    from kfp import compiler

    from pipelines.graphs import build

    check_no_credentials(cfg)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=build(name, cfg), package_path=str(path))
    return path
