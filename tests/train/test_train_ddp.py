"""Training in 2 DDP processes on CPU (Gloo), started by the stage's own launcher
(components.train.launch: torch elastic, as `torchrun`), against the real MLflow test server.

Exactness is tested on one optimizer step, where it holds on any CPU: the same initial weights
and the same global batch, split over 2 ranks, must give the weights one process gets on the
whole batch (to float tolerance). Whole training runs are only checked for sharding, tracking
and a score well above the background baseline: two runs' final scores differ with the
machine's kernels.

The tests' small model cuts the resnet18 encoder to 3 stages: its unused layer3/layer4 once
stopped DDP ("parameters that were not used in producing loss"); every run here exercises that.
"""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace

import pytest
import torch
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient
from model_helpers import TINY, background_baseline, tiny_cfg  # tests/ is on sys.path

from components.core.checkpoint import load_checkpoint
from components.core.model import ModelSpec, build_from_spec
from components.preprocess.stage import run_preprocess
from components.train.engine import train_epoch
from components.train.launch import train_processes
from components.train.stage import (
    SHARD_LOG_ENV,
    _build_trainer,
    _Context,
    make_spec,
    read_prepared,
)
from pipelines.cli import cli
from pipelines.config import load_config
from pipelines.demo.toydata import write_toy_dataset

pytestmark = pytest.mark.timeout(480)  # a rank left waiting in a collective hangs, not fails

EPOCHS = 5
STEP_BATCH = 8  # the global batch of the one-step test: 2 ranks x 4 tiles, or 1 process x 8


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


def test_two_ranks_shard_the_data_and_rank0_alone_tracks(
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

    # A final score only as a sanity check: exactness is the job of the one-step test below.
    baseline = background_baseline(prepared)
    assert m2["epochs_run"] == EPOCHS
    assert m2["best_val_mean_iou"] > baseline + 0.3, (m2["best_val_mean_iou"], baseline)


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


def _without_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm normalizes by the batch's own statistics, so 4 tiles per rank and 8 in one
    process differ by design; everything else (encoder depth, the stages DDP freezes) stays."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
                setattr(module, name, torch.nn.Identity())
    return model


def _one_step(rank: int, world: int, folder, accumulate: int) -> None:
    """One rank of `world` (1: no DDP): segloop's trainer takes one optimizer step on this rank's
    share of the saved batch, in `accumulate` micro-batches; rank 0 saves the gradients the
    optimizer stepped with and the weights after the step."""
    if world > 1:
        torch.distributed.init_process_group(
            "gloo", init_method=f"file://{folder / 'store'}", rank=rank, world_size=world
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch = torch.load(folder / "batch.pt", weights_only=True)
        share = STEP_BATCH // world
        x, y = (batch[k][rank * share : (rank + 1) * share] for k in ("x", "y"))
        micro = share // accumulate
        loader = [(x[i : i + micro], y[i : i + micro]) for i in range(0, share, micro)]
        spec = ModelSpec.model_validate_json((folder / "model.json").read_text())
        model = _without_batchnorm(build_from_spec(spec))
        model.load_state_dict(torch.load(folder / "init.pt", weights_only=True))
        cfg = tiny_cfg(folder, "train.loss=ce", "train.scheduler=none")
        ctx = _Context(rank, world, rank if world > 1 else None, torch.device("cpu"), None, True)
        data = SimpleNamespace(spec=spec, labels=spec.label_set, train_ds=None)
        trainer = _build_trainer(cfg.train, model, data, ctx)
        names = {id(p): n for n, p in trainer.net.named_parameters()}
        grads = {}

        def keep_grads(optimizer, *_):
            for group in optimizer.param_groups:
                grads.update(
                    {names[id(p)]: p.grad.clone() for p in group["params"] if p.grad is not None}
                )

        trainer.optimizer.register_step_pre_hook(keep_grads)
        rt = trainer.rt
        train_epoch(trainer.model, loader, trainer.optimizer, trainer.loss_fn, rt, accumulate)
        if rank == 0:
            after = {"grads": grads, "weights": trainer.net.state_dict()}
            torch.save(after, folder / f"after-{world}.pt")
    finally:
        torch.set_num_threads(threads)
        if world > 1:
            torch.distributed.destroy_process_group()


@pytest.mark.parametrize("accumulate", [1, 2])
def test_one_step_on_two_ranks_equals_one_process_on_the_whole_batch(
    prepared, tmp_path, accumulate
):
    # Cross-entropy alone: a mean over equal-sized shards with no ignored pixel, so the ranks'
    # averaged gradients are the whole batch's (Dice is not a mean over the batch).
    split, stats, labels = read_prepared(prepared)
    cfg = tiny_cfg(tmp_path, "train.loss=ce")
    spec = make_spec(cfg, split, stats, labels)
    (tmp_path / "model.json").write_text(spec.model_dump_json())
    torch.manual_seed(0)
    init = _without_batchnorm(build_from_spec(spec)).state_dict()
    torch.save(init, tmp_path / "init.pt")
    size = spec.tile_size
    batch = {
        "x": torch.randint(0, 256, (STEP_BATCH, 3, size, size), dtype=torch.uint8),
        "y": torch.randint(0, labels.num_classes, (STEP_BATCH, size, size)),
    }
    torch.save(batch, tmp_path / "batch.pt")

    _one_step(0, 1, tmp_path, accumulate)
    torch.multiprocessing.spawn(_one_step, args=(2, tmp_path, accumulate), nprocs=2)

    one = torch.load(tmp_path / "after-1.pt", weights_only=True)
    two = torch.load(tmp_path / "after-2.pt", weights_only=True)
    # The DDP contract: the ranks' all-reduced gradients are the whole batch's gradients.
    assert one["grads"].keys() == two["grads"].keys()
    assert not any(k.startswith("encoder.layer4.") for k in one["grads"])  # outside the forward
    assert len(one["grads"]) > len(init) // 4, "too few gradients to prove anything"
    for key, grad in one["grads"].items():
        scale = grad.abs().max().item()
        torch.testing.assert_close(
            two["grads"][key], grad, rtol=1e-4, atol=1e-6 * scale, msg=lambda m, k=key: f"{k}: {m}"
        )
    # And so the same step. AdamW's first step is about lr * g / (|g| + eps): rounding in a
    # gradient near eps (1e-8) moves a weight by up to a few thousandths of lr, so that bounds it.
    lr = cfg.train.lr
    assert one["weights"].keys() == two["weights"].keys() == init.keys()
    for key in init:
        torch.testing.assert_close(
            two["weights"][key], one["weights"][key], rtol=0, atol=lr * 1e-2,
            msg=lambda m, k=key: f"{k}: {m}",
        )  # fmt: skip
    assert not torch.equal(
        one["weights"]["segmentation_head.0.weight"], init["segmentation_head.0.weight"]
    )


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
