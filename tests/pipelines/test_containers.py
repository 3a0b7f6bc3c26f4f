"""Host paths of a config in the task containers (pipelines/containers.py). The engine-side
behaviour (real exit status, mounts in real containers) runs in `make images-test`
(tests/images/)."""

from __future__ import annotations

import json

import pytest

from components.core.errors import SegloopError
from pipelines.config import load_config
from pipelines.containers import _output_file, _sqlite_file, host_mounts


def test_default_config_needs_only_the_project_folder(tmp_path):
    """The default relative SQLite URL, out_root and stack dir live in the working directory,
    which is mounted at its own path and is the tasks' working directory."""
    assert host_mounts(load_config(), cwd=tmp_path) == [tmp_path.resolve()]


def test_host_paths_outside_the_project_are_mounted(tmp_path):
    project, data, tasks, labels = (tmp_path / n for n in ("project", "data", "tasks", "lbl"))
    project.mkdir()
    data.mkdir()
    labels.mkdir()
    (labels / "labels.json").write_text("[]")
    cfg = load_config(
        None,
        [
            f"db.url=sqlite:///{data}/images.db",
            "cvat.backend=folder",
            f"cvat.folder={tasks}",
            f"project.labels={labels / 'labels.json'}",
        ],
    )
    mounts = host_mounts(cfg, cwd=project)
    assert set(mounts) == {project, data, tasks, labels}
    assert tasks.is_dir()  # the folder backend's tasks folder exists before the mount


def test_relative_path_outside_the_project_is_mounted(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    cfg = load_config(None, ["db.url=sqlite:///../db/images.db"])
    assert host_mounts(cfg, cwd=project) == [project, tmp_path / "db"]


def test_nested_paths_are_mounted_once(tmp_path):
    cfg = load_config(None, ["cvat.backend=folder", f"cvat.folder={tmp_path}/x/tasks"])
    assert host_mounts(cfg, cwd=tmp_path) == [tmp_path.resolve()]


@pytest.mark.parametrize(
    ("override", "setting"),
    [("db.url=sqlite:////usr/local/images.db", "db.url"), ("io.out_root=/opt/venv", "io.out_root")],
)
def test_a_path_over_the_image_is_refused_naming_the_setting(tmp_path, override, setting):
    with pytest.raises(SegloopError, match=rf"^{setting}=.*system folder of the component image"):
        host_mounts(load_config(None, [override]), cwd=tmp_path)


def test_remote_and_non_path_settings_are_not_mounted(tmp_path):
    cfg = load_config(None, ["io.out_root=s3://bucket/runs", "db.url=postgresql://h/db"])
    assert host_mounts(cfg, cwd=tmp_path) == [tmp_path.resolve()]


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///.segloop/images.db", ".segloop/images.db"),
        ("sqlite:////abs/images.db?mode=ro", "/abs/images.db"),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("postgresql+psycopg://u@h/db", None),
    ],
)
def test_sqlite_file(url, path):
    assert _sqlite_file(url) == path


def test_output_file_is_read_from_the_executor_input():
    executor_input = json.dumps({"outputs": {"outputFile": "/r/t/executor_output.json"}})
    command = ["sh", "-c", "...", "--executor_input", executor_input, "--function_to_execute", "f"]
    assert _output_file(command) == "/r/t/executor_output.json"
    assert _output_file(["sh", "--executor_input", "not json"]) is None
    assert _output_file(["true"]) is None


class SilentEngineContainer:
    """A container as docker-py shows it when the engine (podman, seen in `make images-test`)
    leaves a request unanswered past the client's read timeout. A fake: no engine runs in
    `make test`; tests/images/ runs the real one."""

    short_id = "c0ffee"

    def __init__(self, state: str = "exited", code: int = 1):
        self.attrs: dict = {}
        self._state, self._code = state, code

    def logs(self, stream: bool = False, follow: bool = False):
        import requests

        if stream:
            raise requests.exceptions.ReadTimeout("Read timed out. (read timeout=60)")
        return b"the task's output\n"

    def wait(self, timeout=None):
        import requests

        raise requests.exceptions.ReadTimeout(f"Read timed out. (read timeout={timeout})")

    def reload(self):
        import requests

        if self._state == "gone":  # the engine answers nothing any more
            raise requests.exceptions.ConnectionError("Connection aborted.")
        self.attrs = {"State": {"Status": self._state, "ExitCode": self._code}}


def test_an_engine_that_leaves_logs_or_wait_unanswered_still_gives_the_exit_status(capsys):
    from pipelines.containers import _stream_logs, container_exit_status

    container = SilentEngineContainer(code=1)
    _stream_logs(container)  # a stream that times out ends quietly
    assert (
        container_exit_status(container) == 1
    )  # from the container's state: the task's failure stands


def test_no_exit_status_at_all_is_one_line_naming_the_container():
    from pipelines.containers import container_exit_status

    with pytest.raises(SegloopError, match="no exit status for container c0ffee for 1 s"):
        container_exit_status(SilentEngineContainer(state="gone"), unanswered_s=1)
