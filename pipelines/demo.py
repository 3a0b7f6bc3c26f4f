"""`segloop demo`: the active-learning loop end to end, on this machine, in a few minutes.

1. Starts the embedded stack (SeaweedFS + MLflow, `segloop up`) unless it runs already.
2. Writes a synthetic field-image dataset to the stack's S3 bucket and its image table to a
   SQLite DB, and splits the ids: a fixed held-out test set, a labelled seed set, and the pool
   that the rounds draw their batches from.
3. Round 0: the seed set (ground truth, as an already-labelled set) becomes a completed task
   of the `folder` backend; the `training` pipeline downloads it, preprocesses, trains,
   evaluates and registers the first model as `champion`; the `pre_annotation` pipeline then
   pre-annotates round 1's batch with it (query -> infer -> select -> upload).
4. Rounds 1..R: the batch is refined (by the simulated annotator, which says plainly that it
   stands in for people, or by people with `--wait`), then the `active_learning` pipeline runs:
   download -> preprocess (all rounds so far) -> train -> evaluate -> register/compare ->
   pre-annotate the next batch with the champion.
5. A summary table, `summary.json` and the HTML loop report in the run folder (the report and
   the per-round numbers are logged to MLflow too).

Every pipeline runs on KFP's local runner (`segloop run`). The test split is the same fixed
held-out set in every round (`preprocess.test_inputs`), so evaluations share one test hash and
the registry's promotion rule can compare models of successive rounds fairly.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.core import storage, tracking
from components.core.artifacts import write_jsonl
from components.core.errors import SegloopError
from components.core.images import load_mask
from components.core.labels import LabelSet
from components.core.synthetic import make_dataset
from components.report.loop_report import RoundSummary, Sample, write_loop_report
from components.report.stage import most_changed_samples
from pipelines.annotator import simulate_annotator, wait_for_people
from pipelines.config import SegloopConfig, load_config
from pipelines.local import LocalRunResult, run_local
from pipelines.stack import Stack

log = logging.getLogger(__name__)
Echo = Callable[[str], None]


@dataclass(frozen=True)
class DemoSize:
    image: int  # square images, pixels
    test: int  # fixed held-out test images
    seed: int  # labelled seed images (round 0)
    window: int  # pool images queried and pre-annotated per round
    budget: int  # of which the most uncertain go to people
    train: dict[str, Any]


# Sized for a 2-core CPU: small images, a resnet18 encoder cut to 3 stages with a thin decoder,
# small batches (learning here is bound by the number of steps, not by image size).
TINY_UNET = {
    "model_kwargs": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]},
    "pad_divisor": 8,
    "lr": 0.01,
    "batch_size": 4,
    # No early stopping: a tiny model from scratch can sit on "all background" for a few epochs.
    "patience": 0,
}
SMALL = DemoSize(image=64, test=8, seed=8, window=10, budget=5, train={**TINY_UNET, "epochs": 10})
FULL = DemoSize(image=64, test=16, seed=16, window=30, budget=12, train={**TINY_UNET, "epochs": 30})


@dataclass
class RoundResult:
    round: int
    data: str  # where this round's new labels came from
    images_refined: int
    correction_iou: float | None
    changed_share: float | None
    test_mean_iou: float
    per_class_iou: dict[str, float]
    split_hash: str
    model_version: int
    promoted: bool
    reason: str
    train_run_id: str | None
    pipelines: list[str] = field(default_factory=list)  # run folders
    aliases: list[str] = field(default_factory=list)  # at the end of the demo


@dataclass
class DemoResult:
    stamp: str
    workdir: str
    registered_model: str
    mlflow_ui: str
    report: str
    summary: str
    seconds: float
    rounds: list[RoundResult]
    next_batch: str | None = None


# ---------------------------------------------------------------- config


def demo_settings(size: DemoSize, workdir: Path, name: str, cvat: bool) -> dict[str, Any]:
    """The demo's config layer: over the config file's values, under the `-o` overrides."""
    return {
        "project": {"subname": name},
        "io": {"out_root": str(workdir / "runs")},
        "db": {"url": f"sqlite:///{workdir / 'images.db'}", "table": "images"},
        "mlflow": {"registered_model": name},
        "kfp": {"local_root": str(workdir / "kfp")},
        "cvat": {"backend": "cvat" if cvat else "folder", "folder": str(workdir / "annotation")},
        # People finish a CVAT job by setting its state to completed, whatever its stage.
        "download_cvat": {"job_state": "completed"} if cvat else {},
        "infer": {"num_workers": 0},
        "select": {"strategy": "uncertainty", "budget": size.budget},
        "preprocess": {
            "tile_size": size.image,
            "val_fraction": 0.25,
            "workers": 2,
        },
        "train": {
            "arch": "Unet",
            "encoder_name": "resnet18",
            "encoder_weights": None,
            "workers": 0,
            "seed": 0,
            **size.train,
        },
    }


def _with(cfg: SegloopConfig, **sections: dict[str, Any]) -> SegloopConfig:
    """A copy of `cfg` with some keys set (validated like the config file)."""
    data = cfg.model_dump(mode="json")
    for section, values in sections.items():
        data[section] = {**data[section], **values}
    return SegloopConfig.model_validate(data)


# ---------------------------------------------------------------- data


@dataclass
class DemoData:
    labels: LabelSet
    labels_uri: str
    masks: dict[str, str]  # record id -> ground-truth mask URI
    images: dict[str, str]
    test: list[str]
    seed: list[str]
    windows: list[list[str]]  # pool ids per round's batch (1-based: windows[r - 1])
    testset_uri: str

    def truth(self, record_id: str):
        if record_id not in self.masks:
            raise SegloopError(f"record {record_id} is not in the demo's synthetic dataset")
        return load_mask(self.masks[record_id])


def make_demo_data(cfg: SegloopConfig, size: DemoSize, rounds: int, prefix: str) -> DemoData:
    """The synthetic dataset in S3, the image table, and the fixed held-out test set."""
    n = size.test + size.seed + (rounds + 1) * size.window
    synth = make_dataset(
        storage.join(prefix, "data"),
        n,
        seed=0,
        db_url=cfg.db.url,
        table=cfg.db.table,
        size=(size.image, size.image),
    )
    ids = synth.ids
    test, seed = ids[: size.test], ids[size.test : size.test + size.seed]
    pool = ids[size.test + size.seed :]
    windows = [pool[i : i + size.window] for i in range(0, len(pool), size.window)]
    labels = LabelSet.load(synth.labels_uri)
    masks = {r["image_id"]: r["mask_uri"] for r in synth.records}
    images = {r["image_id"]: r["image_uri"] for r in synth.records}
    # The held-out test set in the dataset layout preprocess reads (images/, masks/, labels.json).
    testset = storage.join(prefix, "testset")
    for rid in test:
        storage.copy(images[rid], storage.join(testset, "images", storage.name(images[rid])))
        storage.copy(masks[rid], storage.join(testset, "masks", f"{rid}.png"))
    labels.save(storage.join(testset, "labels.json"))
    return DemoData(labels, synth.labels_uri, masks, images, test, seed, windows, testset)


def write_seed_predictions(data: DemoData, folder: Path) -> Path:
    """The seed set in the layout upload-cvat reads (an infer output), with the ground truth
    as its masks: the labelled set a project starts from."""
    rows = []
    for rid in data.seed:
        storage.copy(data.masks[rid], folder / "masks" / f"{rid}.png")
        rows.append(
            {"record_id": rid, "image_uri": data.images[rid], "mask": f"masks/{rid}.png"}
            | {"status": "ok"}
        )
    write_jsonl(folder / "manifest.jsonl", rows)
    data.labels.save(folder / "labels.json")
    return folder


def window_filters(ids: list[str]) -> list[str]:
    """Query filters for a contiguous window of synthetic ids (`img_00012` ...)."""
    return [f"image_id>={ids[0]}", f"image_id<={ids[-1]}"]


# ---------------------------------------------------------------- results of a pipeline run


def _out(result: LocalRunResult, task: str, output: str) -> str:
    try:
        return result.task(task).outputs[output]
    except KeyError as exc:
        raise SegloopError(
            f"pipeline {result.pipeline} in {result.run_dir} has no output {task}/{output}"
        ) from exc


def collect_round(
    number: int, data_source: str, result: LocalRunResult, runs: list[str], refined: bool = True
) -> RoundResult:
    """One round's numbers from its pipeline outputs (`refined`: its labels were corrections of
    pre-annotations, so the correction effort means something)."""
    download = storage.read_json(Path(_out(result, "download-cvat", "dataset")) / "metrics.json")
    evaluation = storage.read_json(Path(_out(result, "evaluate", "evaluation")) / "metrics.json")
    registration = storage.read_json(
        Path(_out(result, "register", "registration")) / "register.json"
    )
    correction = download.get("correction") or {}
    measured = refined and bool(correction.get("images"))
    return RoundResult(
        round=number,
        data=data_source,
        images_refined=int(download["images"]),
        correction_iou=correction.get("mean_iou") if measured else None,
        changed_share=correction.get("changed_share") if measured else None,
        test_mean_iou=float(evaluation["mean_iou"]),
        per_class_iou={k: v for k, v in (evaluation.get("iou") or {}).items() if v is not None},
        split_hash=str(evaluation["split_hash"]),
        model_version=int(registration["version"]),
        promoted=bool(registration["promoted"]),
        reason=str(registration["reason"]),
        train_run_id=registration.get("run_id"),
        pipelines=runs,
    )


# ---------------------------------------------------------------- the demo


def _banner(echo: Echo, text: str) -> None:
    echo(f"── {text}")


def run_demo(
    config_path: str | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    *,
    small: bool = False,
    rounds: int = 2,
    workdir: str | Path | None = None,
    wait: bool = False,
    wait_timeout_s: float = 7200,
    poll_s: float = 10,
    echo: Echo = print,
) -> DemoResult:
    if rounds < 1:
        raise SegloopError(f"--rounds must be at least 1, got {rounds}")
    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    size = SMALL if small else FULL
    user = load_config(config_path, list(overrides))
    use_cvat = bool(user.cvat.host or os.environ.get("CVAT_HOST"))
    # Task names and the registered model are this run's own, so runs never mix.
    run_name = f"{user.project.name}-{stamp}"
    work = Path(workdir or Path("runs") / "demo" / stamp).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_config(
        config_path, list(overrides), extra=demo_settings(size, work, run_name, use_cvat)
    )
    name = tracking.registered_model_name(cfg)
    if use_cvat:
        from components.core.cvat_client import connect

        with connect(cfg.cvat) as conn:  # fail now, not in round 0's upload, on a bad login
            echo(f"annotation backend: CVAT at {conn.host} (user {conn.user})")
    else:
        echo(f"annotation backend: task folders under {cfg.cvat.folder} (no CVAT_HOST set)")

    # 1. the embedded stack
    s = cfg.stack
    stack = Stack(s.dir, s.s3_port, s.mlflow_port, s.bucket, s.start_timeout_s)
    state, started_now = stack.up()
    # The demo is about this stack: its endpoint and MLflow win over stale settings in the shell.
    os.environ.update(state.env())
    echo(
        f"embedded stack {'started' if started_now else 'already running'}: "
        f"S3 {state.s3_endpoint} (bucket {state.bucket}), MLflow {state.mlflow_uri}"
    )
    echo(f"demo run {stamp}: run folder {work} (each task's full log under kfp/logs/)")

    # 2. data
    prefix = f"s3://{state.bucket}/demo/{stamp}"
    data = make_demo_data(cfg, size, rounds, prefix)
    cfg = _with(
        cfg, project={"labels": data.labels_uri}, preprocess={"test_inputs": [data.testset_uri]}
    )
    echo(
        f"synthetic dataset: {len(data.masks)} images of {size.image}x{size.image} px in "
        f"{prefix}/data; fixed held-out test set {len(data.test)}, labelled seed set "
        f"{len(data.seed)}, pool {size.window} images per round"
    )

    def batch_cfg(base: SegloopConfig, batch: int, **more: dict[str, Any]) -> SegloopConfig:
        """Pre-annotation settings for round `batch`'s images; task names differ per round."""
        return _with(
            base,
            query={"filters": window_filters(data.windows[batch - 1])},
            upload_cvat={"task_name": f"{run_name}-round{batch}"},
            **more,
        )

    results: list[RoundResult] = []
    samples: list[Sample] = []

    # 3. round 0: the labelled seed set -> first model -> champion; pre-annotate batch 1
    _banner(
        echo,
        f"round 0: train a first model on {len(data.seed)} labelled seed images (ground truth, "
        "standing in for labels a project already has), pre-annotate round 1's batch",
    )
    seed_cfg = _with(
        cfg,
        cvat={"backend": "folder"},
        upload_cvat={"task_name": f"{run_name}-round0-seed"},
        download_cvat={"job_state": None, "upload_dir": str(work / "round0" / "seed-tasks")},
    )
    from components.upload_cvat.upload import run_upload_cvat

    predictions = write_seed_predictions(data, work / "round0" / "seed")
    run_upload_cvat(seed_cfg, predictions=str(predictions), out=str(work / "round0" / "seed-tasks"))
    seed_tasks = storage.read_json(work / "round0" / "seed-tasks" / "tasks.json")
    simulate_annotator(seed_cfg, seed_tasks, data.truth, data.labels)
    training = run_local("training", seed_cfg, params={"earlier_datasets": []})
    datasets = [_out(training, "download-cvat", "dataset")]
    pre = run_local("pre_annotation", batch_cfg(cfg, 1))
    results.append(
        collect_round(
            0, "seed (ground truth)", training, [str(training.run_dir), str(pre.run_dir)], False
        )
    )
    upload_dir = _out(pre, "upload-cvat", "tasks")

    # 4. rounds 1..R
    for number in range(1, rounds + 1):
        _banner(echo, f"round {number}: refine the pre-annotations, then one active-learning round")
        tasks = storage.read_json(storage.join(upload_dir, "tasks.json"))
        where = ", ".join(f"{t['name']} ({t['url']})" for t in tasks["tasks"])
        if wait:
            echo(f"people refine {tasks['counts']['images']} images in: {where}")
            waited = wait_for_people(cfg, upload_dir, wait_timeout_s, poll_s, echo)
            echo(f"people completed the tasks after {waited:.0f} s")
            source = "refined by people"
        else:
            echo(
                ">>> SIMULATED ANNOTATOR: this step stands in for people. It writes the synthetic "
                f"ground truth into {tasks['counts']['images']} pre-annotated images of {where} "
                "and marks the tasks completed (with --wait, people do this instead). <<<"
            )
            simulate_annotator(cfg, tasks, data.truth, data.labels)
            source = "refined by the simulated annotator"
        round_cfg = batch_cfg(cfg, number + 1, download_cvat={"upload_dir": upload_dir})
        result = run_local("active_learning", round_cfg, params={"earlier_datasets": datasets})
        datasets.append(_out(result, "download-cvat", "dataset"))
        results.append(collect_round(number, source, result, [str(result.run_dir)]))
        samples += most_changed_samples(
            _out(result, "download-cvat", "dataset"), upload_dir, 2, round_number=number
        )
        upload_dir = _out(result, "upload-cvat", "tasks")

    # 5. summary, report, MLflow
    aliases = current_aliases(cfg, name)
    for r in results:
        r.aliases = aliases.get(r.model_version, [])
    mlflow_ui = f"{state.mlflow_uri}/#/models/{name}"
    report = str(work / "loop_report.html")
    write_loop_report(
        report,
        [
            RoundSummary(
                round=r.round,
                images_refined=r.images_refined,
                correction_iou=r.correction_iou,
                changed_share=r.changed_share,
                test_miou=r.test_mean_iou,
                model_version=str(r.model_version),
                alias=",".join(r.aliases) or None,
                per_class_iou=r.per_class_iou,
            )
            for r in results
        ],
        samples,
        data.labels,
        title=f"segloop demo {stamp}: registered model {name}",
    )
    demo = DemoResult(
        stamp=stamp,
        workdir=str(work),
        registered_model=name,
        mlflow_ui=mlflow_ui,
        report=report,
        summary=str(work / "summary.json"),
        seconds=round(time.monotonic() - started, 1),
        rounds=results,
        next_batch=upload_dir,
    )
    storage.write_json(demo.summary, asdict(demo))
    log_demo_run(cfg, demo)
    echo(summary_text(demo))
    return demo


def current_aliases(cfg: SegloopConfig, name: str) -> dict[int, list[str]]:
    """Version -> aliases, as the registry holds them now."""
    # The registered model holds the alias map (version search results leave aliases out).
    out: dict[int, list[str]] = {}
    for alias, version in tracking.client(cfg).get_registered_model(name).aliases.items():
        out.setdefault(int(version), []).append(alias)
    return {v: sorted(a) for v, a in out.items()}


def log_demo_run(cfg: SegloopConfig, demo: DemoResult) -> None:
    """One MLflow run for the demo: per-round numbers (step = round), summary and report."""
    mlflow = tracking.setup(cfg)
    with mlflow.start_run(run_name=f"demo-{demo.stamp}"):
        mlflow.set_tags(
            {"segloop.demo": demo.stamp, "segloop.registered_model": demo.registered_model}
        )
        for r in demo.rounds:
            values = {"test_mean_iou": r.test_mean_iou, "images_refined": r.images_refined}
            if r.correction_iou is not None:
                values["correction_iou"] = r.correction_iou
            if r.changed_share is not None:
                values["correction_changed_share"] = r.changed_share
            mlflow.log_metrics(values, step=r.round)
        mlflow.log_artifact(demo.report)
        mlflow.log_artifact(demo.summary)


def _fmt(value: float | None, pattern: str = "{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


def summary_text(demo: DemoResult) -> str:
    """Where to look, why each round was (not) promoted, then the table: the last thing shown."""
    header = (
        f"{'round':>5}  {'images':>6}  {'labels from':<36} {'pre-ann IoU':>11}  {'px changed':>10}  "
        f"{'test mIoU':>9}  {'version':>7}  {'promoted':>8}  aliases now"
    )
    lines = [
        "",
        f"loop report:     {demo.report}",
        f"summary:         {demo.summary}",
        f"MLflow UI:       {demo.mlflow_ui}",
        f"next batch:      {demo.next_batch} (pre-annotated by the champion, ready for people)",
        f"took {demo.seconds:.0f} s; the stack keeps running (stop it with `segloop down`)",
        "",
        *(f"round {r.round}: {r.reason}" for r in demo.rounds[1:]),
        "pre-ann IoU: mean IoU of the pre-annotation against the refined mask (1 = nothing to "
        "correct); px changed: share of pixels people changed; test mIoU: on the same held-out "
        f"test set every round (test hash {demo.rounds[0].split_hash[:12]}).",
        "",
        f"segloop demo {demo.stamp}: summary",
        header,
    ]
    for r in demo.rounds:
        lines.append(
            f"{r.round:>5}  {r.images_refined:>6}  {r.data:<36} {_fmt(r.correction_iou):>11}  "
            f"{_fmt(r.changed_share, '{:.1%}'):>10}  {r.test_mean_iou:>9.3f}  {r.model_version:>7}  "
            f"{'yes' if r.promoted else 'no':>8}  {','.join(r.aliases) or '-'}"
        )
    return "\n".join(lines)
