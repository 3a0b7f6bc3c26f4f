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
    """The loop as the module docstring tells it: stack, data, round 0, rounds 1..R, summary."""
    if rounds < 1:
        raise SegloopError(f"--rounds must be at least 1, got {rounds}")
    demo = DemoRun.configure(config_path, overrides, SMALL if small else FULL, workdir, echo)
    demo.check_annotation_backend()
    demo.start_stack()
    demo.write_data(rounds)
    demo.round_zero()
    for number in range(1, rounds + 1):
        if wait:
            source = demo.wait_for_people(number, wait_timeout_s, poll_s)
        else:
            source = demo.simulate_people(number)
        demo.learning_round(number, source)
    return demo.finish()


@dataclass
class DemoRun:
    """One demo run's state, filled in step by step by `run_demo`."""

    cfg: SegloopConfig
    size: DemoSize
    stamp: str
    run_name: str  # task names and the registered model are this run's own
    work: Path
    echo: Echo
    started: float
    mlflow_uri: str = ""
    data: DemoData | None = None
    results: list[RoundResult] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)  # every round's download, for preprocess
    upload_dir: str = ""  # the batch pre-annotated last, waiting for people

    @classmethod
    def configure(
        cls,
        config_path: str | None,
        overrides: tuple[str, ...] | list[str],
        size: DemoSize,
        workdir: str | Path | None,
        echo: Echo,
    ) -> DemoRun:
        started = time.monotonic()
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        user = load_config(config_path, list(overrides))
        use_cvat = bool(user.cvat.host or os.environ.get("CVAT_HOST"))
        run_name = f"{user.project.name}-{stamp}"
        work = Path(workdir or Path("runs") / "demo" / stamp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        cfg = load_config(
            config_path, list(overrides), extra=demo_settings(size, work, run_name, use_cvat)
        )
        return cls(cfg, size, stamp, run_name, work, echo, started)

    @property
    def registered_model(self) -> str:
        return tracking.registered_model_name(self.cfg)

    def check_annotation_backend(self) -> None:
        if self.cfg.cvat.backend == "cvat":
            from components.core.cvat_client import connect

            with connect(self.cfg.cvat) as conn:  # fail now, not in round 0's upload
                self.echo(f"annotation backend: CVAT at {conn.host} (user {conn.user})")
        else:
            self.echo(
                f"annotation backend: task folders under {self.cfg.cvat.folder} (no CVAT_HOST set)"
            )

    def start_stack(self) -> None:
        """1. The embedded stack, unless it runs already; it keeps running after the demo."""
        s = self.cfg.stack
        stack = Stack(s.dir, s.s3_port, s.mlflow_port, s.bucket, s.start_timeout_s)
        state, started_now = stack.up()
        # The demo is about this stack: its endpoint and MLflow win over stale shell settings.
        os.environ.update(state.env())
        self.mlflow_uri = state.mlflow_uri
        self.echo(
            f"embedded stack {'started' if started_now else 'already running'}: "
            f"S3 {state.s3_endpoint} (bucket {state.bucket}), MLflow {state.mlflow_uri}"
        )
        self.echo(
            f"demo run {self.stamp}: run folder {self.work} (each task's full log under kfp/logs/)"
        )

    def write_data(self, rounds: int) -> None:
        """2. The synthetic dataset in S3, its image table, the fixed held-out test set."""
        bucket = self.cfg.stack.bucket
        prefix = f"s3://{bucket}/demo/{self.stamp}"
        self.data = make_demo_data(self.cfg, self.size, rounds, prefix)
        self.cfg = _with(
            self.cfg,
            project={"labels": self.data.labels_uri},
            preprocess={"test_inputs": [self.data.testset_uri]},
        )
        size = self.size
        self.echo(
            f"synthetic dataset: {len(self.data.masks)} images of {size.image}x{size.image} px "
            f"in {prefix}/data; fixed held-out test set {len(self.data.test)}, labelled seed set "
            f"{len(self.data.seed)}, pool {size.window} images per round"
        )

    def batch_cfg(self, batch: int, **more: dict[str, Any]) -> SegloopConfig:
        """Pre-annotation settings for round `batch`'s images; task names differ per round."""
        return _with(
            self.cfg,
            query={"filters": window_filters(self.data.windows[batch - 1])},
            upload_cvat={"task_name": f"{self.run_name}-round{batch}"},
            **more,
        )

    def round_zero(self) -> None:
        """3. The labelled seed set -> the first model (champion); pre-annotate batch 1."""
        from components.upload_cvat.upload import run_upload_cvat

        data = self.data
        _banner(
            self.echo,
            f"round 0: train a first model on {len(data.seed)} labelled seed images (ground "
            "truth, standing in for labels a project already has), pre-annotate round 1's batch",
        )
        seed_tasks_dir = self.work / "round0" / "seed-tasks"
        seed_cfg = _with(
            self.cfg,
            cvat={"backend": "folder"},
            upload_cvat={"task_name": f"{self.run_name}-round0-seed"},
            download_cvat={"job_state": None, "upload_dir": str(seed_tasks_dir)},
        )
        predictions = write_seed_predictions(data, self.work / "round0" / "seed")
        run_upload_cvat(seed_cfg, predictions=str(predictions), out=str(seed_tasks_dir))
        seed_tasks = storage.read_json(seed_tasks_dir / "tasks.json")
        simulate_annotator(seed_cfg, seed_tasks, data.truth, data.labels)
        training = run_local("training", seed_cfg, params={"earlier_datasets": []})
        self.datasets.append(_out(training, "download-cvat", "dataset"))
        pre = run_local("pre_annotation", self.batch_cfg(1))
        runs = [str(training.run_dir), str(pre.run_dir)]
        self.results.append(collect_round(0, "seed (ground truth)", training, runs, False))
        self.upload_dir = _out(pre, "upload-cvat", "tasks")

    def _open_batch(self, number: int) -> tuple[dict[str, Any], str]:
        _banner(
            self.echo,
            f"round {number}: refine the pre-annotations, then one active-learning round",
        )
        tasks = storage.read_json(storage.join(self.upload_dir, "tasks.json"))
        where = ", ".join(f"{t['name']} ({t['url']})" for t in tasks["tasks"])
        return tasks, where

    def wait_for_people(self, number: int, timeout_s: float, poll_s: float) -> str:
        """4a. People refine the batch (`--wait`); returns where the labels came from."""
        tasks, where = self._open_batch(number)
        self.echo(f"people refine {tasks['counts']['images']} images in: {where}")
        waited = wait_for_people(self.cfg, self.upload_dir, timeout_s, poll_s, self.echo)
        self.echo(f"people completed the tasks after {waited:.0f} s")
        return "refined by people"

    def simulate_people(self, number: int) -> str:
        """4a. The simulated annotator refines the batch, and says that it stands in for people."""
        tasks, where = self._open_batch(number)
        self.echo(
            ">>> SIMULATED ANNOTATOR: this step stands in for people. It writes the synthetic "
            f"ground truth into {tasks['counts']['images']} pre-annotated images of {where} "
            "and marks the tasks completed (with --wait, people do this instead). <<<"
        )
        simulate_annotator(self.cfg, tasks, self.data.truth, self.data.labels)
        return "refined by the simulated annotator"

    def learning_round(self, number: int, source: str) -> None:
        """4b. The active_learning pipeline: download -> ... -> pre-annotate the next batch."""
        round_cfg = self.batch_cfg(number + 1, download_cvat={"upload_dir": self.upload_dir})
        result = run_local("active_learning", round_cfg, params={"earlier_datasets": self.datasets})
        dataset = _out(result, "download-cvat", "dataset")
        self.datasets.append(dataset)
        self.results.append(collect_round(number, source, result, [str(result.run_dir)]))
        self.samples += most_changed_samples(dataset, self.upload_dir, 2, round_number=number)
        self.upload_dir = _out(result, "upload-cvat", "tasks")

    def finish(self) -> DemoResult:
        """5. Aliases as the registry holds them, the loop report, summary.json, MLflow."""
        name = self.registered_model
        aliases = current_aliases(self.cfg, name)
        for r in self.results:
            r.aliases = aliases.get(r.model_version, [])
        report = str(self.work / "loop_report.html")
        write_loop_report(
            report,
            [round_summary(r) for r in self.results],
            self.samples,
            self.data.labels,
            title=f"segloop demo {self.stamp}: registered model {name}",
        )
        demo = DemoResult(
            stamp=self.stamp,
            workdir=str(self.work),
            registered_model=name,
            mlflow_ui=f"{self.mlflow_uri}/#/models/{name}",
            report=report,
            summary=str(self.work / "summary.json"),
            seconds=round(time.monotonic() - self.started, 1),
            rounds=self.results,
            next_batch=self.upload_dir,
        )
        storage.write_json(demo.summary, asdict(demo))
        log_demo_run(self.cfg, demo)
        self.echo(summary_text(demo))
        return demo


def round_summary(r: RoundResult) -> RoundSummary:
    """A round as the loop report shows it."""
    return RoundSummary(
        round=r.round,
        images_refined=r.images_refined,
        correction_iou=r.correction_iou,
        changed_share=r.changed_share,
        test_miou=r.test_mean_iou,
        model_version=str(r.model_version),
        alias=",".join(r.aliases) or None,
        per_class_iou=r.per_class_iou,
    )


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
