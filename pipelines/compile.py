"""Compile a pipeline to KFP IR YAML (what CI builds and `segloop submit` uploads).

`check_no_credentials` is the one check, shared by `compile`, `submit`, `deploy` and `launch`,
that keeps credentials out of what travels in clear text (the YAML, `config_json` and the
other run parameters): they belong in the Kubernetes Secrets listed under `kfp.env_from`.
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from components.core.config import is_secret_key
from components.core.errors import SegloopError
from pipelines.config import SegloopConfig

# scheme://user:password@ (the password may hold '/' when it was not percent-encoded).
_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@")


def url_credential(value: str) -> str | None:
    """What makes `value` a URL that carries a credential (None when it is not one)."""
    if "://" not in value:
        return None
    try:
        parts = urlsplit(value.strip())
        password = parts.password
        query = parse_qsl(parts.query, keep_blank_values=False)
    except ValueError:
        password, query = None, []
    if password:
        return "a password inside the URL"
    m = _USERINFO.match(value.strip())
    # user:password@ with a '/' in the password; `host:8080/path@x` is a port, not a password.
    if m and m["pw"] and not re.match(r"\d+(/|$)", m["pw"]):
        return "a password inside the URL"
    names = [name for name, val in query if val and is_secret_key(name)]
    if names:
        return f"a credential in the URL's query ({', '.join(names)})"
    return None


def find_credentials(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(key, why) for every credential in `data`: a non-empty value under a key that looks like
    a secret (password, secret, token, access_key, credential), or a URL that carries one."""
    found: list[tuple[str, str]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            name = f"{prefix}{key}"
            if is_secret_key(str(key)) and isinstance(value, str) and value:
                found.append((name, "a value under a key that names a credential"))
            else:
                found += find_credentials(value, f"{name}.")
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            found += find_credentials(value, f"{prefix.rstrip('.')}[{i}].")
    elif isinstance(data, str):
        why = url_credential(data)
        if why:
            found.append((prefix.rstrip("."), why))
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
    """Refuse a config (and run parameters) holding credentials: the config is compiled into
    the pipeline YAML and sent as the run's `config_json`, both in clear text."""
    found = find_credentials(cfg.model_dump(mode="json"))
    found += [(f"parameter {k}", why) for k, why in find_credentials(params or {})]
    if not found:
        return
    lines = [f"- {key}: {why}; {_secret_for(key, cfg)}" for key, why in found]
    raise SegloopError(
        "the config holds credentials, which would be written in clear text into the pipeline "
        "YAML and the run's parameters:\n" + "\n".join(lines)
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
