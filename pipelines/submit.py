"""Submit compiled pipelines to Kubeflow Pipelines (KFP 2.x API, v2beta1) with `kfp.Client`.

`submit` compiles the pipeline from the config, uploads it (a new pipeline the first time, a new
version of it after that), finds or creates the experiment and starts a run whose `config_json`
parameter is the resolved config, so the cluster run uses the same config as a local run.
Credentials: a bearer token (`--token`, `$KFP_TOKEN`) or a projected service-account token file
(`--sa-token-path`); they are never printed.

`segloop deploy | launch | runs` reuse the pieces: `make_client`, `api_call` (kfp.Client calls
with clear errors), `check_backend` (the KFP backend's version), `find_pipeline`,
`latest_version`, `upload`, and `submit(version=...)` to run a version that is already uploaded.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.core.errors import SegloopError
from components.core.version import segloop_version
from pipelines.config import SegloopConfig, run_config_json
from pipelines.graphs import kfp_name

log = logging.getLogger(__name__)

FINAL_STATES = {"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"}


@dataclass
class Submission:
    pipeline_id: str
    version_id: str
    version_name: str
    experiment_id: str
    run_id: str
    run_url: str
    state: str | None = None


def make_client(
    host: str,
    namespace: str | None = None,
    token: str | None = None,
    sa_token_path: str | None = None,
):
    """A `kfp.Client` for `host`, authenticated by a token or a service-account token file."""
    import kfp
    from kfp.client import ServiceAccountTokenVolumeCredentials

    if token and sa_token_path:
        raise SegloopError("give either --token or --sa-token-path, not both")
    credentials = None
    if sa_token_path:
        if not Path(sa_token_path).is_file():
            raise SegloopError(
                f"service-account token file {sa_token_path} does not exist; in a pod it is "
                "usually a projected volume (see docs/kubeflow/submitting.md)"
            )
        credentials = ServiceAccountTokenVolumeCredentials(path=sa_token_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2 beta" banner
        try:
            return kfp.Client(
                host=host,
                namespace=namespace or "kubeflow",
                existing_token=token or None,
                credentials=credentials,
            )
        except Exception as exc:  # noqa: BLE001 - any failure to reach the API, in words
            raise SegloopError(f"cannot reach the Kubeflow Pipelines API at {host}: {exc}") from exc


def api_call(what: str, host: str, func, *args, **kwargs):
    """Run `func(*args, **kwargs)`, a kfp.Client call; an API error, a timeout or an unreachable
    host becomes a SegloopError that names `what` was being done, at `host`, and a likely cause."""
    from kfp_server_api.exceptions import ApiException

    try:
        return func(*args, **kwargs)
    except ApiException as exc:
        hint = {
            401: "the token is missing or expired (--token / --sa-token-path)",
            403: "this identity may not do that in this namespace (check --namespace and RBAC)",
            404: "not found: is --host the KFP API endpoint (e.g. https://HOST/pipeline)?",
        }.get(exc.status, exc.reason)
        raise SegloopError(f"{what} failed at {host}: HTTP {exc.status}: {hint}") from None
    except TimeoutError as exc:  # before OSError, of which it is a subclass
        raise SegloopError(f"{what}: timed out ({exc}); the run goes on in the cluster") from None
    except OSError as exc:  # connection refused, DNS, TLS
        raise SegloopError(f"{what} failed: cannot reach {host}: {exc}") from None


# Every Secret mount compiles (kfp-kubernetes 2.17) with the `optional` and
# `secretNameParameter` fields. KFP's driver (backend/src/v2/driver) parses them by version:
#   <= 2.4.0        parses its input strictly and fails every pod on the unknown fields;
#   2.4.1 - 2.14.x  drops `optional`: a key that may be absent becomes required;
#   >= 2.15.0       honours it.
FIRST_WORKING = (2, 4, 1)
OPTIONAL_HONOURED = (2, 15, 0)
_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


def backend_version(client, host: str) -> str | None:
    """The KFP backend's release tag from its healthz endpoint (`tag_name`), None if it reports
    none. Read raw: the generated client's healthz model drops `tag_name`, and
    `Client.get_kfp_healthz` retries for 25 s on every error."""
    answer = api_call(
        "reading the backend's version (healthz)",
        host,
        client._healthz_api.healthz_service_get_healthz,
        _preload_content=False,
    )
    try:
        tag = json.loads(answer.data or b"{}").get("tag_name")
    except (ValueError, AttributeError):
        return None
    return tag if isinstance(tag, str) and tag else None


def optional_secret_keys(cfg: SegloopConfig) -> dict[str, list[str]]:
    """{Secret: keys} that the pods read only when present (what a backend that drops
    `optional` makes required)."""
    found: dict[str, list[str]] = {}
    for secret in cfg.kfp.env_from.all():
        if not secret.stages:
            continue
        keys = [*secret.keys] if secret.optional else []
        keys += [k for k in secret.optional_keys if k not in keys]
        mine = found.setdefault(secret.name, [])
        mine += [k for k in keys if k not in mine]
    return {name: keys for name, keys in found.items() if keys}


def check_backend(client, host: str, cfg: SegloopConfig) -> str | None:
    """Refuse a KFP backend that cannot run what segloop compiles (one line); warn where it runs
    it only if every Secret holds every key; returns the backend's version."""
    tag = backend_version(client, host)
    match = _VERSION.match(tag or "")
    version = tuple(int(n) for n in match.groups()) if match else None
    if version is not None and version < FIRST_WORKING:
        raise SegloopError(
            f"the Kubeflow Pipelines backend at {host} is {tag}: its driver rejects the "
            "`optional` field of the Secret mounts segloop compiles and fails every pod; "
            "upgrade KFP to 2.15.0 or later (see docs/kubeflow/submitting.md)"
        )
    if version is not None and version >= OPTIONAL_HONOURED:
        return tag
    keys = optional_secret_keys(cfg)
    if keys:
        listed = "; ".join(f"{name}: {', '.join(k)}" for name, k in keys.items())
        why = (
            f"is {tag}, which ignores `optional` on Secret keys (honoured from 2.15.0)"
            if version is not None
            else f"does not report its version (healthz tag_name {tag!r}); before 2.15.0 KFP "
            "ignores `optional` on Secret keys"
        )
        log.warning(
            "the Kubeflow Pipelines backend at %s %s: every one of these keys must exist in "
            "its Secret, empty where unused, or the pods fail with CreateContainerConfigError: "
            "%s (manifests/secrets/*.env.example carry them all)",
            host,
            why,
            listed,
        )
    return tag


def find_pipeline(client, name: str, namespace: str | None) -> str | None:
    """The id of the pipeline whose display name is `name` (a `kfp_name`), or None if there is
    none. Call it through `api_call` to get clear errors."""
    found = pipeline_named(client, name, namespace)
    return found.pipeline_id if found else None


def pipeline_named(client, name: str, namespace: str | None):
    """The pipeline (a `V2beta1Pipeline`: `.pipeline_id`, `.description`) whose display name is
    `name`, or None. Call it through `api_call` to get clear errors."""
    flt = json.dumps(
        {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]}
    )
    found = client.list_pipelines(filter=flt, namespace=namespace).pipelines or []
    return found[0] if found else None


def latest_version(client, pipeline_id: str):
    """The newest version (a `V2beta1PipelineVersion`: `.pipeline_version_id`, `.display_name`)
    of pipeline `pipeline_id`; a SegloopError if it has none. Call it through `api_call`."""
    versions = client.list_pipeline_versions(
        pipeline_id, page_size=1, sort_by="created_at desc"
    ).pipeline_versions
    if not versions:
        raise SegloopError(f"pipeline {pipeline_id} was uploaded but has no version")
    return versions[0]


def upload(client, name: str, cfg: SegloopConfig, namespace: str | None, host: str):
    """Upload pipeline `name` (new pipeline, or new version of it); returns (pid, vid, vname).

    The descriptions (the pipeline's when it is created with its first version, each later
    version's own) record the compile-time `kfp` settings, which `launch` checks its config
    against (`pipelines.compile.kfp_fingerprint`)."""
    from pipelines.compile import compile_pipeline, kfp_fingerprint  # kfp: only when uploading

    pipeline_name = kfp_name(cfg, name)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    version_name = f"{pipeline_name}-{segloop_version()}-{stamp}"
    with tempfile.TemporaryDirectory(prefix="segloop-submit-") as tmp:
        package = compile_pipeline(name, cfg, Path(tmp) / f"{name}.yaml")
        pipeline_id = api_call(
            "finding the pipeline", host, find_pipeline, client, pipeline_name, namespace
        )
        if pipeline_id is None:
            pipeline = api_call(
                "uploading the pipeline",
                host,
                client.upload_pipeline,
                str(package),
                pipeline_name=pipeline_name,
                description=f"segloop {name}\n{kfp_fingerprint(cfg)}",
                namespace=namespace,
            )
            version = api_call(
                "reading its version", host, latest_version, client, pipeline.pipeline_id
            )
            return pipeline.pipeline_id, version.pipeline_version_id, version.display_name
        version = api_call(
            "uploading a new pipeline version",
            host,
            client.upload_pipeline_version,
            str(package),
            pipeline_version_name=version_name,
            pipeline_id=pipeline_id,
            description=f"segloop {name} {version_name}\n{kfp_fingerprint(cfg)}",
        )
        return pipeline_id, version.pipeline_version_id, version_name


def submit(
    name: str,
    cfg: SegloopConfig,
    client,
    *,
    host: str,
    namespace: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    params: dict[str, Any] | None = None,
    service_account: str | None = None,
    version: tuple[str, str, str] | None = None,
    wait: bool = False,
    timeout_s: int = 6 * 3600,
    poll_s: float = 10,
) -> Submission:
    """Upload `name` and start a run; with `wait`, block until the run ends.

    `version`: an uploaded (pipeline id, version id, version name) to run instead of uploading.
    """
    from pipelines.compile import check_no_credentials

    # Before anything reaches the server: config_json and params travel in clear text.
    check_no_credentials(cfg, params)
    check_backend(client, host, cfg)
    pipeline_id, version_id, version_name = version or upload(client, name, cfg, namespace, host)
    experiment_name = experiment or cfg.kfp.experiment or cfg.project.name
    exp = api_call(
        "creating the experiment",
        host,
        client.create_experiment,
        name=experiment_name,
        namespace=namespace,
    )
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run = api_call(
        "creating the run",
        host,
        client.run_pipeline,
        experiment_id=exp.experiment_id,
        job_name=run_name or f"{kfp_name(cfg, name)}-{stamp}",
        params={"config_json": run_config_json(cfg), **(params or {})},
        pipeline_id=pipeline_id,
        version_id=version_id,
        service_account=service_account,
    )
    result = Submission(
        pipeline_id,
        version_id,
        version_name,
        exp.experiment_id,
        run.run_id,
        f"{host.rstrip('/')}/#/runs/details/{run.run_id}",
        str(run.state) if run.state else None,
    )
    if wait:
        done = api_call(
            "waiting for the run",
            host,
            client.wait_for_run_completion,
            run.run_id,
            timeout=timeout_s,
            sleep_duration=poll_s,
        )
        result.state = str(done.state)
    return result
