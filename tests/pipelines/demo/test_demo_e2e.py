"""`segloop demo --small`: the active-learning loop end to end, as a user runs it.

The demo runs as a subprocess (the `segloop` console script), starts its own embedded stack
(real SeaweedFS and MLflow servers on free 127.0.0.1 ports, in a temporary stack folder) and
runs every pipeline on KFP's local runner. The test checks the outcome against what MLflow and
the storage hold, then stops the stack by the PIDs `segloop up` saved.

A second test runs one round with the CVAT-protocol test server (tests/cvat_server) as the
annotation backend. The `--wait` tests use the folder backend and need no server.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import SEGLOOP_SCRIPT  # tests/ is on sys.path

from components.core.artifacts import write_jsonl
from components.core.errors import SegloopError
from components.core.images import load_mask, save_mask_png, save_rgb
from pipelines.config import load_config
from pipelines.demo.annotator import pending_tasks, wait_for_people
from pipelines.demo.synthetic import LABELS
from pipelines.stack.embedded import Stack
from pipelines.stack.processes import free_port

MIN_IMPROVEMENT = 0.005  # register.min_improvement's default, which the demo keeps
TIMEOUT_S = 900


@pytest.fixture
def stack_dir(tmp_path):
    """A stack folder for the demo's own `segloop up`; its servers are stopped by saved PID."""
    folder = tmp_path / "stack"
    yield folder
    stopped = Stack(folder).down()  # stops exactly the PIDs in stack.json
    assert all("pid" in s for s in stopped)


def run_demo(tmp_path, stack_dir, *args: str, env: dict | None = None):
    workdir = tmp_path / "work"
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "S3_", "MLFLOW_", "CVAT_", "SEGLOOP_"))
    }
    cmd = [
        SEGLOOP_SCRIPT,
        "demo",
        "--small",
        "--workdir",
        str(workdir),
        "-o",
        f"stack.dir={stack_dir}",
        "-o",
        f"stack.s3_port={free_port()}",
        "-o",
        f"stack.mlflow_port={free_port()}",
        *args,
    ]
    proc = subprocess.run(
        cmd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    summary = json.loads((workdir / "summary.json").read_text())
    return proc, summary


def mlflow_client(stack_dir, monkeypatch):
    from mlflow import MlflowClient

    state = Stack(stack_dir).running()
    assert state, "the demo leaves its stack running"
    for key, value in state.env().items():  # the test reads the demo's S3 objects too
        monkeypatch.setenv(key, value)
    return MlflowClient(tracking_uri=state.mlflow_uri), state


def expected_aliases(versions: dict[int, dict[str, str]]) -> dict[int, set[str]]:
    """Champion and challenger as the promotion rule says, from the versions' own tags."""
    champion = None
    for v in sorted(versions):
        tags = versions[v]
        if champion is None:
            champion = v
            continue
        same_split = tags["segloop.split_hash"] == versions[champion]["segloop.split_hash"]
        gain = float(tags["segloop.mean_iou"]) - float(versions[champion]["segloop.mean_iou"])
        if same_split and gain >= MIN_IMPROVEMENT:
            champion = v
    out: dict[int, set[str]] = {v: set() for v in versions}
    out[champion].add("champion")
    out[max(versions)].add("challenger")
    return out


def check_registry_and_summary(client, summary, rounds: int) -> dict[int, dict[str, str]]:
    name = summary["registered_model"]
    mvs = client.search_model_versions(f"name = '{name}'")
    versions = {int(mv.version): dict(mv.tags) for mv in mvs}
    aliases: dict[int, set[str]] = {v: set() for v in versions}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases[int(version)].add(alias)
    assert sorted(versions) == list(range(1, rounds + 2))
    # One fixed test set: every version was evaluated on the same test split.
    assert len({t["segloop.split_hash"] for t in versions.values()}) == 1
    assert aliases == expected_aliases(versions)

    assert [r["round"] for r in summary["rounds"]] == list(range(rounds + 1))
    for r in summary["rounds"]:
        tags = versions[r["model_version"]]
        assert r["test_mean_iou"] == pytest.approx(float(tags["segloop.mean_iou"]), abs=1e-6)
        assert set(r["aliases"]) == aliases[r["model_version"]]
        run = client.get_run(r["train_run_id"])
        assert run.data.metrics["test_mean_iou"] == pytest.approx(r["test_mean_iou"], abs=1e-9)
        promoted_by_registry = "beats champion" in tags["segloop.promotion"] or r["round"] == 0
        assert r["promoted"] == promoted_by_registry, tags["segloop.promotion"]
    return versions


def check_console(proc, summary) -> None:
    """One line per pipeline task, full task logs in files: the whole story in under 70 lines,
    ending with the summary table and one verdict line per goal of the loop."""
    out = proc.stdout
    assert "SIMULATED ANNOTATOR: this step stands in for people" in out
    shown = out.splitlines() + proc.stderr.splitlines()
    assert len(shown) < 70, "\n".join(shown)
    tail = out.rstrip().splitlines()[-len(summary["verdicts"]) - 4 :]
    assert [line.strip() for line in tail[-len(summary["verdicts"]) :]] == summary["verdicts"]
    assert tail[0].lstrip().startswith("2 ") and tail[1].lstrip().startswith("next ")
    goals = ["champion test mIoU rises", "probe effort", "probe pre-annotation IoU", "every class"]
    for goal, line in zip(goals, summary["verdicts"], strict=True):
        assert goal in line and line.startswith(("met", "NOT met")), line
    assert "  training         train            ok" in out
    assert "loop report:" in out and "MLflow UI:" in out and summary["mlflow_ui"] in out


def check_rounds(rounds: list[dict], summary) -> None:
    """Round 0: `training` then `pre_annotation`; rounds 1 and 2: `active_learning`, each a
    run of KFP's local runner with every task's folder."""
    training, pre_annotation = (Path(p).name for p in rounds[0]["pipelines"])
    assert training.startswith("demo-training-")
    assert pre_annotation.startswith("demo-pre-annotation-")
    stages = {"query", "infer", "select", "upload-cvat", "download-cvat", "preprocess"}
    stages |= {"train", "evaluate", "register", "loop-report"}
    for r in rounds[1:]:
        (run_dir,) = map(Path, r["pipelines"])
        assert run_dir.name.startswith("demo-active-learning-")
        assert {p.name for p in run_dir.iterdir() if p.is_dir()} == stages
        assert r["images_refined"] == 5 and r["data"] == "refined by the simulated annotator"
        assert 0 <= r["changed_share"] <= 1 and 0 <= r["correction_iou"] <= 1
    assert rounds[0]["images_refined"] == 8 and rounds[0]["changed_share"] is None
    assert [r["labelled_images"] for r in rounds] == [8, 13, 18]
    # The probe: round r's batch was pre-annotated by the champion after round r - 1; that
    # champion also pre-annotated the fixed probe set, and next_probe is the final champion's.
    assert rounds[0]["probe"] is None
    for r, before in zip(rounds[1:], rounds, strict=False):
        assert r["probe"]["images"] == 8 and 0 <= r["probe"]["changed_share"] <= 1
        champion = [x for x in rounds[: before["round"] + 1] if x["promoted"]][-1]
        assert r["probe"]["model_version"] == champion["model_version"]
    assert summary["next_probe"]["images"] == 8


def check_refined_masks_are_the_truth(rounds: list[dict], summary) -> None:
    """The refined masks that reached training are the ground truth, pixel for pixel, and the
    correction effort is measured against what was uploaded."""
    r1 = Path(rounds[1]["pipelines"][0])
    dataset = r1 / "download-cvat" / "dataset"
    manifest = [json.loads(line) for line in (dataset / "manifest.jsonl").read_text().splitlines()]
    changed = total = 0
    for entry in manifest:
        truth_uri = f"s3://segloop/demo/{summary['stamp']}/data/masks/{entry['record_id']}.png"
        refined = load_mask(dataset / entry["mask"])
        assert (refined == load_mask(truth_uri)).all(), entry["record_id"]
        changed += entry["correction"]["changed_pixels"]
        total += entry["correction"]["pixels"]
    assert rounds[1]["changed_share"] == pytest.approx(changed / total, abs=1e-6)


def check_probe_effort(rounds: list[dict], summary, workdir: Path) -> None:
    """The probe effort is what a person would change on the probe images: recounted from the
    probe's pre-annotations and the ground truth; probe images are never trained on."""
    probe_dir = workdir / "round1" / "probe" / "infer"
    entries = [json.loads(line) for line in (probe_dir / "manifest.jsonl").read_text().splitlines()]
    changed = total = 0
    for entry in entries:
        truth = load_mask(
            f"s3://segloop/demo/{summary['stamp']}/data/masks/{entry['record_id']}.png"
        )
        changed += int((load_mask(probe_dir / entry["mask"]) != truth).sum())
        total += truth.size
    assert rounds[2]["probe"]["changed_share"] == pytest.approx(changed / total, abs=1e-9)
    probe_ids = {e["record_id"] for e in entries}
    trained = {
        e["record_id"]
        for r in rounds[1:]
        for line in (Path(r["pipelines"][0]) / "download-cvat" / "dataset" / "manifest.jsonl")
        .read_text()
        .splitlines()
        if (e := json.loads(line))
    }
    assert not probe_ids & trained, "probe images are never selected or trained on"


def check_report_and_mlflow_run(rounds: list[dict], summary, client) -> None:
    """The report exists, shows the rounds, the label-efficiency curves, the verdicts and the
    side-by-side overlays, and is in MLflow with the per-round metrics."""
    report = Path(summary["report"])
    html = report.read_text()
    assert "Pre-annotation and refined mask" in html and html.count("data:image/png") >= 4
    assert "Does the loop pay off?" in html and 'alt="label efficiency' in html
    for line in summary["verdicts"]:
        assert line in unescape(html)
    demo_runs = client.search_runs(
        [client.get_experiment_by_name("demo").experiment_id],
        filter_string=f"tags.`segloop.demo` = '{summary['stamp']}'",
    )
    (demo_run,) = demo_runs
    logged = {a.path for a in client.list_artifacts(demo_run.info.run_id)}
    assert {"loop_report.html", "summary.json"} <= logged
    history = client.get_metric_history(demo_run.info.run_id, "test_mean_iou")
    assert {m.step: m.value for m in history} == pytest.approx(
        {r["round"]: r["test_mean_iou"] for r in rounds}
    )
    effort = client.get_metric_history(demo_run.info.run_id, "correction_changed_share")
    assert {m.step: m.value for m in effort} == pytest.approx(
        {r["round"]: r["changed_share"] for r in rounds[1:]}
    )
    probe = client.get_metric_history(demo_run.info.run_id, "probe_changed_share")
    assert {m.step: m.value for m in probe} == pytest.approx(
        {r["round"]: r["probe"]["changed_share"] for r in rounds[1:]}
    )


@pytest.mark.e2e
@pytest.mark.servers  # the demo's own `segloop up`
def test_demo_small_two_rounds(tmp_path, stack_dir, monkeypatch):
    proc, summary = run_demo(tmp_path, stack_dir, "--rounds", "2")
    rounds = summary["rounds"]
    check_console(proc, summary)
    check_rounds(rounds, summary)
    client, _ = mlflow_client(stack_dir, monkeypatch)
    check_registry_and_summary(client, summary, rounds=2)
    check_refined_masks_are_the_truth(rounds, summary)
    check_probe_effort(rounds, summary, tmp_path / "work")
    check_report_and_mlflow_run(rounds, summary, client)


@pytest.mark.e2e
def test_demo_one_round_through_cvat(tmp_path, stack_dir, cvat_server, monkeypatch):
    from cvat_sdk import make_client

    env = {**cvat_server.env()}
    proc, summary = run_demo(
        tmp_path,
        stack_dir,
        "--rounds",
        "1",
        "-o",
        "cvat.status_check_period_s=0.05",
        "-o",
        "cvat.backoff_s=0.05",
        env=env,
    )
    assert "SIMULATED ANNOTATOR" in proc.stdout
    assert cvat_server.password not in proc.stdout + proc.stderr
    (round1,) = summary["rounds"][1:]
    run_dir = Path(round1["pipelines"][0])
    provenance = json.loads((run_dir / "download-cvat" / "dataset" / "provenance.json").read_text())
    assert provenance["backend"] == "cvat" and provenance["source"] == cvat_server.host
    assert round1["images_refined"] == 5 and 0 <= round1["changed_share"] <= 1

    # What people would see in CVAT: round 1's task finished, round 2's batch waiting.
    person = make_client(cvat_server.host, credentials=(cvat_server.username, cvat_server.password))
    tasks = {t.name: t for t in person.tasks.list()}
    prefix = f"demo-{summary['stamp']}"  # <project>-<time>: this run's task names
    done, waiting = tasks[f"{prefix}-round1"], tasks[f"{prefix}-round2"]
    assert all(j.state == "completed" for j in done.get_jobs())
    assert all(j.state == "new" for j in waiting.get_jobs()) and waiting.size == 5

    client, _ = mlflow_client(stack_dir, monkeypatch)
    check_registry_and_summary(client, summary, rounds=1)


# ---------------------------------------------------------------- --wait (folder backend)


@pytest.fixture
def uploaded(tmp_path):
    """Two tiny pre-annotated images uploaded as one task of the folder backend."""
    from components.upload_cvat.stage import run_upload_cvat

    pred = tmp_path / "pred"
    rows = []
    for i in range(2):
        rid = f"img_{i}"
        save_rgb(pred / "images" / f"{rid}.jpg", np.full((24, 32, 3), 90 + i, np.uint8))
        mask = np.zeros((24, 32), np.uint8)
        mask[4:12, 4:20] = 1 + i
        save_mask_png(pred / "masks" / f"{rid}.png", mask)
        rows.append(
            {
                "record_id": rid,
                "image_uri": str(pred / "images" / f"{rid}.jpg"),
                "mask": f"masks/{rid}.png",
                "status": "ok",
            }
        )
    write_jsonl(pred / "manifest.jsonl", rows)
    LABELS.save(pred / "labels.json")
    cfg = load_config(
        None,
        [
            "cvat.backend=folder",
            f"cvat.folder={tmp_path / 'annotation'}",
            "upload_cvat.task_name=people-round1",
            f"download_cvat.upload_dir={tmp_path / 'up'}",
        ],
    )
    run_upload_cvat(cfg, predictions=str(pred), out=str(tmp_path / "up"))
    return cfg, str(tmp_path / "up"), tmp_path / "annotation" / "people-round1" / "task.json"


def test_wait_for_people_returns_when_they_complete_the_task(uploaded):
    cfg, upload_dir, task_json = uploaded
    assert [why for *_, why in pending_tasks(cfg, upload_dir)] == [
        "status is annotation, required completed"
    ]

    def people():
        time.sleep(0.5)
        meta = json.loads(task_json.read_text())
        task_json.write_text(json.dumps({**meta, "status": "completed"}))

    lines: list[str] = []
    thread = threading.Thread(target=people)
    thread.start()
    waited = wait_for_people(cfg, upload_dir, timeout_s=30, poll_s=0.1, echo=lines.append)
    thread.join(5)
    assert 0.4 < waited < 30
    assert "waiting for people to complete 1 task(s)" in lines[0] and "people-round1" in lines[1]
    assert pending_tasks(cfg, upload_dir) == []


def test_wait_for_people_times_out_with_a_clear_message(uploaded):
    cfg, upload_dir, _ = uploaded
    with pytest.raises(SegloopError) as err:
        wait_for_people(cfg, upload_dir, timeout_s=0.3, poll_s=0.1, echo=lambda _: None)
    message = str(err.value)
    assert "did not complete the annotation tasks within 0.3 s" in message
    assert "people-round1" in message and "--wait-timeout" in message


# ---------------------------------------------------------------- the fixed test split


def _dataset(root: Path, ids: range, seed: int = 0) -> str:
    """Synthetic images and masks in the layout preprocess reads."""
    from pipelines.demo.synthetic import render

    for i in ids:
        image, mask, _ = render(seed, i, 32, 32)
        save_rgb(root / "images" / f"img_{i:05d}.jpg", image, quality=95)
        save_mask_png(root / "masks" / f"img_{i:05d}.png", mask)
    LABELS.save(root / "labels.json")
    return str(root)


def test_fixed_test_set_keeps_the_test_hash_as_training_data_grow(tmp_path):
    """What makes the demo's rounds comparable: with `preprocess.test_inputs`, every image of
    the test datasets is in the test split, no other image is, and `test_hash` (what evaluate
    records and register compares) does not change when training data are added."""
    from components.preprocess.stage import run_preprocess

    test = _dataset(tmp_path / "test", range(0, 4))
    seed = _dataset(tmp_path / "seed", range(4, 12))
    more = _dataset(tmp_path / "more", range(12, 20))
    cfg = load_config(None, ["preprocess.tile_size=32", "preprocess.workers=1"])
    cfg.preprocess.test_inputs = [test]
    first = run_preprocess(cfg, inputs=[seed], out=str(tmp_path / "r0"))
    second = run_preprocess(cfg, inputs=[seed, more], out=str(tmp_path / "r1"))
    split = json.loads((tmp_path / "r1" / "split.json").read_text())
    assert split["records"]["test"] == [f"img_{i:05d}" for i in range(4)]
    assert sorted(split["records"]["train"] + split["records"]["val"]) == [
        f"img_{i:05d}" for i in range(4, 20)
    ]
    assert first["test_hash"] == second["test_hash"] == split["test_hash"]
    assert first["split_hash"] != second["split_hash"]
