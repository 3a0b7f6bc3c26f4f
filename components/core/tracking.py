"""MLflow helpers: where to track, which experiment and registered model, dataset inputs.

Tracking URI: `mlflow.tracking_uri` in the config, else `$MLFLOW_TRACKING_URI`, else a SQLite
file under the stack folder (works with no server). In a Kubeflow Pipelines task pod (KFP sets
`KFP_POD_NAME` there) there is no SQLite fallback: runs and models written inside the pod are
lost with it, so a task with no tracking URI fails at once and names the Secret that should
provide it. (Other pods, a notebook server with its volume say, keep the fallback.) Experiment and
registered model default to the project name. Model versions are addressed by aliases
(`champion`, `challenger`), never by the deprecated stages.

Everything that reads MLflow takes the URI explicitly (`tracking_uri(cfg)`, `client(cfg)`,
`checkpoint.load_checkpoint(..., tracking_uri=...)`): nothing relies on MLflow's process-wide
default, which would be `./mlflow.db` in the current folder. An http(s) server that does not
answer is reported as "cannot reach MLflow at <url>" within about `REACH_WAIT_S` seconds
(`ensure_reachable`), instead of MLflow's own retries (minutes); MLflow's own calls get a shorter
timeout and fewer retries by default (`components.core.timeouts`). The URI is masked in every
message (a password in it never shows).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.core import timeouts
from components.core.config import SharedConfig
from components.core.errors import SegloopError
from components.core.shutdown import Terminated

log = logging.getLogger(__name__)

# Prefix of the tags segloop sets on model versions (`segloop.mean_iou`, `segloop.iou.<class>`).
TAG = "segloop."


# The Secret that gives cluster tasks MLFLOW_TRACKING_URI (`kfp.env_from.mlflow.name`, compiled
# into the tasks; the run-time config does not carry it, so messages name the default).
MLFLOW_SECRET = "segloop-mlflow"
# How long an http(s) tracking server may take to answer before "cannot reach MLflow" (seconds;
# covers a brief hiccup such as a server restart, and stays far below MLflow's own retries).
REACH_WAIT_S = 6.0


def in_pipeline_pod() -> bool:
    """Inside a KFP task pod: KFP's driver gives every task container KFP_POD_NAME."""
    return bool(os.environ.get("KFP_POD_NAME") and os.environ.get("KUBERNETES_SERVICE_HOST"))


def tracking_uri(cfg: SharedConfig) -> str:
    """`mlflow.tracking_uri`, else `$MLFLOW_TRACKING_URI`, else SQLite under `stack.dir` (not in a
    KFP task pod: there it is a SegloopError naming the Secret that should set the URI)."""
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if in_pipeline_pod():
        raise SegloopError(
            "no MLflow tracking URI in this pipeline task's pod: MLFLOW_TRACKING_URI is not set and "
            "the config has no mlflow.tracking_uri. On a cluster it comes from the Secret "
            f"{MLFLOW_SECRET!r} (the name is kfp.env_from.mlflow.name in the config), key "
            "MLFLOW_TRACKING_URI, in the run's namespace: create it (`kubectl create secret "
            f"generic {MLFLOW_SECRET} --from-literal=MLFLOW_TRACKING_URI=http://<mlflow>:5000`) "
            "or set mlflow.tracking_uri. segloop does not fall back to a SQLite file inside the "
            "pod: its runs and models would be lost when the pod ends"
        )
    folder = Path(cfg.stack.dir)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'mlflow.db').resolve()}"


def experiment_name(cfg: SharedConfig) -> str:
    return cfg.mlflow.experiment or cfg.project.name


def registered_model_name(cfg: SharedConfig) -> str:
    return cfg.mlflow.registered_model or cfg.project.name


def setup(cfg: SharedConfig, experiment: bool = True):
    """Point mlflow at the tracking server (and experiment); returns the mlflow module."""
    import mlflow

    # Before set_tracking_uri, which exports MLFLOW_TRACKING_URI itself.
    fallback = not (cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    uri = tracking_uri(cfg)
    ensure_reachable(uri)
    timeouts.mlflow_defaults()
    mlflow.set_tracking_uri(uri)
    if experiment:
        try:
            if fallback and mlflow.get_experiment_by_name(experiment_name(cfg)) is None:
                # The no-server fallback keeps artifacts beside its database, not in ./mlruns.
                artifacts = (Path(cfg.stack.dir) / "mlartifacts").resolve()
                mlflow.create_experiment(experiment_name(cfg), artifact_location=artifacts.as_uri())
            mlflow.set_experiment(experiment_name(cfg))
        except Exception as exc:  # connection refused, auth, bad URI: all end here
            raise SegloopError(
                f"cannot reach MLflow at {uri} ({type(exc).__name__}: {one_line(exc)}); "
                "start the stack (`segloop up`) or set MLFLOW_TRACKING_URI"
            ) from exc
    return mlflow


def client(cfg: SharedConfig):
    """An MlflowClient on the configured tracking server (checked to answer, see
    `ensure_reachable`); model registry: the same server unless MLFLOW_REGISTRY_URI says
    otherwise."""
    uri = tracking_uri(cfg)
    ensure_reachable(uri)
    return client_for(uri)


def client_for(uri: str):
    from mlflow import MlflowClient

    timeouts.mlflow_defaults()
    return MlflowClient(tracking_uri=uri)


def ensure_reachable(uri: str, wait_s: float | None = None) -> None:
    """Raise "cannot reach MLflow at <uri>" when an http(s) tracking server gives no answer
    within `wait_s` (default `REACH_WAIT_S`), retrying meanwhile so that a brief hiccup passes.

    Any HTTP answer counts as reachable (a 401 or 404 is for MLflow's own calls to explain);
    other URIs (sqlite:, file:, databricks) are not checked. Without this, MLflow retries a
    refused connection for about four minutes and then reports it as a missing model.
    """
    if not str(uri).startswith(("http://", "https://")):
        return
    import requests
    from tenacity import Retrying, retry_if_exception_type, stop_before_delay, wait_exponential

    wait = REACH_WAIT_S if wait_s is None else wait_s
    deadline = time.monotonic() + wait
    no_answer = (requests.ConnectionError, requests.Timeout)

    def probe() -> None:
        left = deadline - time.monotonic()
        try:
            requests.get(
                f"{str(uri).rstrip('/')}/health", timeout=max(0.5, min(3.0, left)), stream=True
            ).close()
        except requests.exceptions.SSLError:
            return  # it answered; certificate trouble is for MLflow's own calls to report
        except requests.RequestException as exc:
            if isinstance(exc, no_answer):
                raise
            # A malformed URL and the like: MLflow's own error says more.

    try:
        Retrying(
            retry=retry_if_exception_type(no_answer),
            stop=stop_before_delay(wait),
            wait=wait_exponential(multiplier=0.5),  # 0.5 s, 1 s, 2 s ...
            reraise=True,
        )(probe)
    except no_answer as last:
        raise SegloopError(
            f"cannot reach MLflow at {uri} (no answer within {wait:g} s: {type(last).__name__}); "
            "start the tracking server (`segloop up` for the local stack) or fix "
            "mlflow.tracking_uri / MLFLOW_TRACKING_URI"
        ) from None


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An MLflow error as one short line (its messages span lines and quote whole responses)."""
    return " ".join(str(exc).split())[:limit]


def log_split_input(split: dict[str, Any], source: str, context: str = "training") -> None:
    """Log the preprocessed split as an MLflow dataset input (name + digest = split hash)."""
    import mlflow
    import pandas as pd

    rows = [
        {"split": name, "record_id": rid}
        for name, ids in split.get("records", {}).items()
        for rid in ids
    ]
    with warnings.catch_warnings():
        # A local path "can be interpreted in multiple ways" by MLflow; any of them is fine.
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            pd.DataFrame(rows, columns=["split", "record_id"]),
            source=source,
            name=f"split-{split['hash'][:12]}",
            digest=split["hash"][:36],
        )
    mlflow.log_input(dataset, context=context)


def params_flat(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as `a.b: value` strings (MLflow params are flat, <= 6000 chars)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(params_flat(value, prefix=f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


def run_id_for_model(uri: str, tracking_uri: str) -> str | None:
    """The MLflow run that produced a model URI (runs:/, models:/name/v, @alias, m-<id>), asked
    of the tracking server `tracking_uri` (`tracking_uri(cfg)`)."""
    from mlflow.exceptions import MlflowException

    uri = str(uri)
    try:
        if uri.startswith("runs:/"):
            return uri[len("runs:/") :].split("/", 1)[0]
        if not uri.startswith("models:/"):
            return None
        ensure_reachable(tracking_uri)
        client = client_for(tracking_uri)
        ref = uri[len("models:/") :].strip("/")
        if ref.startswith("m-"):
            return client.get_logged_model(ref.split("/", 1)[0]).source_run_id
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias).run_id
        name, _, version = ref.partition("/")
        return client.get_model_version(name, version).run_id
    except MlflowException as exc:
        log.warning("cannot find the MLflow run of %s: %s", uri, one_line(exc))
        return None


# ---------------------------------------------------------------- runs that a killed process left

OUTPUT_TAG = f"{TAG}output"  # where a run writes: a later run on the same output finds it


def end_stale_runs(cfg: SharedConfig, output: str, keep: str | None = None) -> list[str]:
    """Mark FAILED the runs of the project's experiment still RUNNING for `output` (all but
    `keep`, a run being resumed): a killed pod (SIGKILL, OOM, node loss) ends no run. The caller
    holds the output's lock, so no live run writes there. Returns the run ids ended."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(experiment_name(cfg))
    if experiment is None:
        return []
    mlc = mlflow.MlflowClient()
    runs = mlc.search_runs(
        [experiment.experiment_id], "attributes.status = 'RUNNING'", max_results=1000
    )
    stale = [
        r.info.run_id
        for r in runs
        if r.data.tags.get(OUTPUT_TAG) == output and r.info.run_id != keep
    ]
    for run_id in stale:
        log.warning(
            "MLflow run %s for %s was left RUNNING by a killed process: FAILED", run_id, output
        )
        mlc.set_tag(run_id, f"{TAG}ended", "left running by a killed process")
        mlc.set_terminated(run_id, "FAILED")
    return stale


@contextlib.contextmanager
def killed_on_signal() -> Iterator[None]:
    """End the active run as KILLED when SIGTERM (`shutdown.Terminated`) or Ctrl-C stops the
    process; other errors leave it to `start_run`'s own exit (FAILED)."""
    import mlflow

    try:
        yield
    except (Terminated, KeyboardInterrupt):
        with contextlib.suppress(Exception):  # the run's end must not hide the signal
            mlflow.end_run("KILLED")
        raise
