"""Every task of a local run in the component images (`segloop smoke-test`,
`kfp.local_runner=docker`): KFP's DockerRunner against a Docker-API engine (Docker, or podman's
`podman system service`), with what it lacks for segloop's default config.

- Host paths. A task reads the config the user wrote on the host: a relative SQLite URL, the
  folder backend's task folders, output roots, a labels file. The project folder (the working
  directory) is mounted at the same path and is the task's working directory, and every other
  host path the config names is mounted at its own path; a path that would cover the image's own
  system folders is refused with one line naming the setting.
- Exit status. KFP's `run_docker_container` starts containers with auto-remove and reads a
  404 on `wait()` (the container already gone: podman removes it before answering) as exit 0.
  Here the container is waited for and then removed, and a task that exits 0 without writing
  its executor output still fails: the output is checked, not the runner's word.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.core.errors import SegloopError
from pipelines.config import SegloopConfig

# The image's own folders: a host folder mounted over one of them would hide segloop itself.
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib64", "/usr", "/etc", "/proc", "/sys", "/dev")
IMAGE_DIRS = ("/opt/venv",)
IMAGE_UID = 10001  # the non-root user of images/segloop.Dockerfile
# Waiting for a task's container: each wait() request is bounded, and the engine must answer
# wait() or a state query at least this often; after the exit, the log stream gets this long
# to end before the whole log is fetched instead.
WAIT_REQUEST_S = 30
UNANSWERED_S = 120.0
LOG_DRAIN_S = 10.0
REMOTE = ("s3://", "gs://", "http://", "https://", "mlflow-artifacts:", "models:", "runs:")


def engine_error() -> str | None:
    """Why no Docker-API engine can run containers here, or None when one answers."""
    try:
        import docker
    except ImportError:
        return "the `docker` Python package is not installed (pip install docker)"
    try:
        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable engine
        return f"no Docker engine answers ({type(exc).__name__}: {exc})"
    return None


def _sqlite_file(url: str) -> str | None:
    """The database file of a SQLite URL (relative or absolute), None for other URLs."""
    if not url.startswith("sqlite"):
        return None
    _, sep, rest = url.partition(":///")
    path = rest.split("?", 1)[0]
    return path if sep and path and path != ":memory:" else None


def _walk(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(dotted setting, string value) for every string in a config dump."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{key}[{i}]")
    elif isinstance(value, str):
        yield key, value


def _host_folder(setting: str, value: str, cwd: Path) -> Path | None:
    """The host folder a setting's value needs inside the container, or None (not a path)."""
    if setting.startswith("kfp."):  # the cluster's settings; the pipeline root KFP mounts itself
        return None
    sqlite = _sqlite_file(value) if setting == "db.url" else None
    if sqlite is not None:
        return (cwd / sqlite).resolve().parent
    if not value or value.startswith(REMOTE) or "\n" in value:
        return None
    is_path = value.startswith(("/", "./", "../")) or setting in ("cvat.folder", "io.out_root")
    if not is_path:
        return None
    path = (cwd / value).resolve()
    if setting in ("cvat.folder", "io.out_root"):
        return path  # folders the stages write into: created below when missing
    if not path.exists():
        return None  # not a host path after all (or one no stage can read)
    return path if path.is_dir() else path.parent


def _covers_image(folder: Path) -> bool:
    text = str(folder)
    if text == "/" or any(image.startswith(text.rstrip("/") + "/") for image in IMAGE_DIRS):
        return True
    return any(text == d or text.startswith(d + "/") for d in (*SYSTEM_DIRS, *IMAGE_DIRS))


def host_mounts(cfg: SegloopConfig, cwd: Path | None = None) -> list[Path]:
    """The host folders the tasks need, each mounted at its own path: the project folder (the
    tasks' working directory, so relative paths mean the same) and every folder a setting
    names outside it. Raises SegloopError naming a setting whose folder would cover the image."""
    cwd = (cwd or Path.cwd()).resolve()
    if _covers_image(cwd):
        raise SegloopError(
            f"the working directory {cwd} is a system folder of the component image and cannot "
            "be mounted into its containers: run from your project folder"
        )
    folders = [cwd]
    for setting, value in _walk(cfg.model_dump(mode="json")):
        folder = _host_folder(setting, value, cwd)
        if folder is None or any(folder.is_relative_to(f) for f in folders):
            continue
        if _covers_image(folder):
            raise SegloopError(
                f"{setting}={value!r} is the folder {folder} on this machine, a system folder of "
                "the component image: it cannot be mounted into the task containers; move it "
                "under your project folder (or to s3://) and set it again"
            )
        folder.mkdir(parents=True, exist_ok=True)
        folders = [f for f in folders if not f.is_relative_to(folder)] + [folder]
    return folders


def mount_specs(folders: list[Path]) -> list[Any]:
    from docker.types import Mount

    return [Mount(target=str(f), source=str(f), type="bind") for f in folders]


def _output_file(command: list[str]) -> str | None:
    """Where the KFP executor writes its output (from the command's --executor_input)."""
    for flag, value in zip(command, command[1:], strict=False):
        if flag == "--executor_input":
            with contextlib.suppress(ValueError, AttributeError):
                return json.loads(value)["outputs"]["outputFile"]
    return None


def _image_ready(client: Any, image: str) -> None:
    import docker

    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    try:
        print(f"pulling image {image}")
        client.images.pull(image)
    except docker.errors.APIError as exc:
        raise SegloopError(
            f"image {image} is not in the container engine and cannot be pulled "
            f"({exc.explanation or exc}); build it with `make images` or set kfp.images.cpu/cuda"
        ) from None


def run_container(
    client: Any, image: str, command: list[str], volumes: dict[str, Any], **run_args: Any
) -> int:
    """Stands in for kfp.local.docker_task_handler.run_docker_container: the same container,
    its real exit status, and exit 0 without the executor output counts as a failure."""
    import docker

    image = image if ":" in image.rsplit("/", 1)[-1] else f"{image}:latest"
    _image_ready(client, image)
    container = client.containers.run(
        image=image, command=command, detach=True, volumes=volumes, **run_args
    )
    print(f"segloop: task in container {container.short_id} of {image}")
    # The log stream in a thread of its own: an engine may leave it open after the container
    # exits (podman, seen in `make images-test`), and the exit status must not wait for it.
    printer = threading.Thread(target=_stream_logs, args=(container,), daemon=True)
    printer.start()
    try:
        status = container_exit_status(container)
        printer.join(LOG_DRAIN_S)
        if printer.is_alive():
            print("segloop: the engine left the task's log stream open; its whole log:")
            print(container.logs().decode(errors="replace"), end="")
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
    output = _output_file(command)
    if status == 0 and output and not Path(output).is_file():
        print(f"segloop: the task exited 0 but wrote no executor output ({output}): failed")
        return 1
    return status


def _stream_logs(container: Any) -> None:
    """Print the container's output as it comes, until the engine ends the stream."""
    import requests

    with contextlib.suppress(requests.exceptions.RequestException):
        for chunk in container.logs(stream=True, follow=True):
            print(chunk.decode(errors="replace"), end="")


def container_exit_status(container: Any, unanswered_s: float = UNANSWERED_S) -> int:
    """The container's exit status, waited for as long as it runs: wait() in bounded requests,
    its state read between them (an engine may leave wait() unanswered after the container
    exits); one line when the engine answers neither for `unanswered_s`."""
    import requests

    last_answer = time.monotonic()
    while True:
        with contextlib.suppress(requests.exceptions.RequestException):
            return int(container.wait(timeout=WAIT_REQUEST_S)["StatusCode"])
        try:
            container.reload()
        except requests.exceptions.RequestException:
            if time.monotonic() - last_answer > unanswered_s:
                raise SegloopError(
                    f"the container engine gave no exit status for container "
                    f"{container.short_id} for {unanswered_s:.0f} s; check the engine "
                    "(`podman ps -a`, `docker ps -a`)"
                ) from None
            time.sleep(1)
            continue
        last_answer = time.monotonic()
        state = container.attrs.get("State", {})
        if state.get("Status") in ("exited", "dead"):
            return int(state.get("ExitCode", 1))
        time.sleep(1)


@contextlib.contextmanager
def exit_status_checked() -> Iterator[None]:
    """KFP's DockerRunner with `run_container` in place of its own container runner (a
    KFP bug: auto-remove plus a 404 on wait() reads as success; no KFP option avoids it)."""
    from unittest import mock

    from kfp.local import docker_task_handler

    with mock.patch.object(docker_task_handler, "run_docker_container", run_container):
        yield


def docker_runner(cfg: SegloopConfig) -> Any:
    """A DockerRunner for segloop's tasks: the host's network (the embedded stack listens on
    127.0.0.1), this user's ids (files on mounted folders stay the user's), the stack's and
    segloop's environment, the host folders the config needs."""
    from kfp import local

    cwd = Path.cwd().resolve()
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(("AWS_", "S3_", "MLFLOW_", "CVAT_", "SEGLOOP_"))
    }
    # The host's CA bundle path means nothing in the image (its own bundle is used).
    env.pop("AWS_CA_BUNDLE", None)
    if os.getuid() != IMAGE_UID:
        env["HOME"] = "/tmp"  # the image's home belongs to its own user
    return local.DockerRunner(
        network_mode="host",
        environment=env,
        user=f"{os.getuid()}:{os.getgid()}",
        working_dir=str(cwd),
        mounts=mount_specs(host_mounts(cfg, cwd)),
    )
