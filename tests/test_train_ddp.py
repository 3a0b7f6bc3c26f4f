"""Training in 2 DDP processes on CPU (Gloo), started by the stage's own launcher
(components.train.launch: torch elastic, as `torchrun`), against the real MLflow test server.

The tests' small model cuts the resnet18 encoder to 3 stages: its unused layer3/layer4 once
stopped DDP ("parameters that were not used in producing loss"); every run here exercises that.
"""

from __future__ import annotations

import json
import uuid

import pytest
import torch
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient
from test_train import TINY, background_baseline, tiny_cfg  # tests/ is on sys.path

from components.core.checkpoint import load_checkpoint
from components.preprocess.stage import run_preprocess
from components.train.launch import train_processes
from components.train.stage import SHARD_LOG_ENV, run_train
from components.train.toydata import write_toy_dataset
from pipelines.cli import cli
from pipelines.config import load_config

pytestmark = pytest.mark.timeout(480)  # a rank left waiting in a collective hangs, not fails

EPOCHS = 5
# Best val mean IoU of 2 ranks vs 1 process on the same data, seed and global batch (8 = 2 x 4).
# The runs agree in distribution only: sample order (DistributedSampler vs DataLoader shuffle),
# augmentation draws (one stream per rank) and BatchNorm batch statistics (4 tiles per rank, 8
# in one process) differ. Measured on this data after 5 epochs: 1 process, seeds 0/1/2 gave
# 0.897/0.928/0.882 (range 0.046); 2 ranks, seed 0, 0.914 (0.017 from 1 process, seed 0).
# 0.1 is about twice the seed-to-seed range; a broken DDP (a rank's gradients dropped, shards
# overlapping, a wrong batch split) lands far below the 1-process score or near the background
# baseline, which the other assertion checks.
MIOU_TOLERANCE = 0.1


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """16 toy images -> 48 train tiles and 8 val tiles of 64 px."""
    root = tmp_path_factory.mktemp("ddp-data")
    data = write_toy_dataset(root / "ds", n=16, seed=0, sizes=(64, 128))
    cfg = load_config(None, [f"stack.dir={root / 'stack'}", "preprocess.tile_size=64"])
    run_preprocess(cfg, inputs=[str(data)], out=str(root / "pre"))
    return root / "pre"


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def only_run(client: MlflowClient, experiment: str):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def test_two_ranks_shard_the_data_rank0_tracks_and_match_one_process(
    prepared, mlflow_env, tmp_path, monkeypatch
):
    shards = tmp_path / "shards"
    monkeypatch.setenv(SHARD_LOG_ENV, str(shards))
    experiment = f"test-train-ddp-{uuid.uuid4().hex[:8]}"
    opts = [f"train.epochs={EPOCHS}", "train.log_model=false", "train.patience=0"]
    out = tmp_path / "ddp"
    m2 = train_processes(
        tiny_cfg(tmp_path, *opts, f"mlflow.experiment={experiment}"),
        data=str(prepared),
        out=str(out),
        nproc=2,
    )

    # Disjoint shards: each epoch, each rank 6 batches of 4 tiles (global batch 8: 6 steps over 48 tiles),
    # none shared, together every train tile; a new order every epoch.
    train_tiles = {p.stem for p in (prepared / "train" / "images").iterdir()}
    logs = {r: read_jsonl(shards / f"rank{r}.jsonl") for r in (0, 1)}
    assert sorted(p.name for p in shards.iterdir()) == ["rank0.jsonl", "rank1.jsonl"]
    for epoch in range(1, EPOCHS + 1):
        rows = [logs[r][epoch - 1] for r in (0, 1)]
        assert [(row["rank"], row["world"], row["epoch"]) for row in rows] == [
            (0, 2, epoch),
            (1, 2, epoch),
        ]
        assert [row["batches"] for row in rows] == [6, 6]
        assert [len(row["tiles"]) for row in rows] == [24, 24]
        assert not set(rows[0]["tiles"]) & set(rows[1]["tiles"])
        assert set(rows[0]["tiles"]) | set(rows[1]["tiles"]) == train_tiles
    assert logs[0][0]["tiles"] != logs[0][1]["tiles"]

    # Rank 0 alone tracks and writes: one MLflow run, one value per epoch, one manifest line
    # per epoch, the checkpoints.
    client = MlflowClient(mlflow_env)
    run = only_run(client, experiment)
    assert run.info.run_id == m2["run_id"] and run.data.params["runtime.world_size"] == "2"
    for name in ("train_loss", "val_mean_iou", "val_loss"):
        assert [h.step for h in client.get_metric_history(m2["run_id"], name)] == [1, 2, 3, 4, 5]
    assert [e["epoch"] for e in read_jsonl(out / "manifest.jsonl")] == [1, 2, 3, 4, 5]
    _, spec = load_checkpoint(out / "best")
    assert spec.classes == 3 and spec.data_hash == m2["data_hash"]
    assert (out / "last" / "state.pt").is_file()
    # Checkpoints hold every parameter (the ones frozen for DDP too): they load as before.
    last, _ = load_checkpoint(out / "last")
    assert any(k.startswith("encoder.layer4.") for k in last.state_dict())

    # The same training in one process.
    monkeypatch.delenv(SHARD_LOG_ENV)
    m1 = run_train(tiny_cfg(tmp_path, *opts), data=str(prepared), out=str(tmp_path / "one"))
    baseline = background_baseline(prepared)
    assert m2["epochs_run"] == m1["epochs_run"] == EPOCHS
    assert m2["best_val_mean_iou"] > baseline + 0.3, (m2["best_val_mean_iou"], baseline)
    diff = abs(m2["best_val_mean_iou"] - m1["best_val_mean_iou"])
    print(f"best val mIoU: 2 ranks {m2['best_val_mean_iou']:.4f}, 1 process "
          f"{m1['best_val_mean_iou']:.4f}, difference {diff:.4f} (tolerance {MIOU_TOLERANCE})")  # fmt: skip
    assert diff <= MIOU_TOLERANCE, (m2["best_val_mean_iou"], m1["best_val_mean_iou"])


def test_cli_nproc_resume_and_early_stop_under_ddp(prepared, mlflow_env, tmp_path):
    out = tmp_path / "train"
    experiment = f"test-train-ddp-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "run.yaml"
    small = {**TINY["train"], "log_model": False, "max_steps_per_epoch": 2}
    config.write_text(yaml.safe_dump({"train": small}))
    overrides = [f"stack.dir={tmp_path / 'stack'}", f"mlflow.experiment={experiment}"]

    def segloop_train(*args: str):
        flags = ["-c", str(config), *(x for o in overrides for x in ("-o", o))]
        cmd = ["train", *flags, "--data", str(prepared), "--out", str(out), "--nproc", "2"]
        result = CliRunner().invoke(cli, [*cmd, *args])
        assert result.exit_code == 0, result.output
        return result

    first = segloop_train("--epochs", "2")
    assert "after epoch 2" in first.output
    run_id = json.loads((out / "mlflow.json").read_text())["run_id"]

    # A previous best no epoch can beat: with patience 2 both ranks must stop after epochs 3
    # and 4 (a rank that went on would hang the other in its next all-reduce).
    state_path = out / "last" / "state.pt"
    state = torch.load(state_path, weights_only=True)
    assert (state["epoch"], state["stale"]) == (2, 0)
    state["best_miou"] = 1.0
    torch.save(state, state_path)
    best_before = (out / "best" / "model.pt").stat().st_mtime_ns

    segloop_train("--epochs", "8", "--resume", str(out), "-o", "train.patience=2")
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["start_epoch"], metrics["last_epoch"], metrics["epochs_run"]) == (3, 4, 2)
    assert metrics["run_id"] == run_id
    client = MlflowClient(mlflow_env)
    assert only_run(client, experiment).info.run_id == run_id
    steps = [h.step for h in client.get_metric_history(run_id, "train_loss")]
    assert steps == [1, 2, 3, 4]
    assert [e["epoch"] for e in read_jsonl(out / "manifest.jsonl")] == [1, 2, 3, 4]
    assert torch.load(state_path, weights_only=True)["stale"] == 2
    assert (out / "best" / "model.pt").stat().st_mtime_ns == best_before  # no new best


@pytest.mark.parametrize(("overrides", "nproc"), [
    (["kfp.gpu.accelerator_count=4"], 4),
    (["kfp.gpu.accelerator_count=1"], 1),
    (["kfp.gpu.accelerator_count=0"], 1),  # on CPU: one process
    (["kfp.gpu.accelerator_count=2", "kfp.gpu.stages=[infer]"], 1),
])  # fmt: skip
def test_pipeline_train_task_starts_one_process_per_gpu(tmp_path, overrides, nproc):
    from pipelines.compile import compile_pipeline

    cfg = load_config(None, [f"stack.dir={tmp_path / 'stack'}", *overrides])
    path = compile_pipeline("training", cfg, tmp_path / "p.yaml")
    spec = next(yaml.safe_load_all(path.read_text()))  # the pipeline spec, then platform
    task = spec["root"]["dag"]["tasks"]["train"]
    assert task["inputs"]["parameters"]["nproc"]["runtimeValue"]["constant"] == nproc
    resources = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    if nproc > 1:
        assert int(resources["accelerator"]["resourceCount"]) == nproc
