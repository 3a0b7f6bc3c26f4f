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
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.core import storage, tracking
from components.core.artifacts import read_jsonl, write_jsonl
from components.core.errors import SegloopError
from components.core.images import load_mask
from components.core.labels import LabelSet
from components.loop_report.page import RoundSummary, Sample, write_loop_report
from components.loop_report.stage import most_changed_samples
from pipelines.config import SegloopConfig, load_config
from pipelines.demo.annotator import simulate_annotator, wait_for_people
from pipelines.demo.loop_goals import LoopFigures, verdicts
from pipelines.demo.synthetic import make_dataset
from pipelines.local import LocalRunResult, run_local
from pipelines.stack.embedded import Stack

log = logging.getLogger(__name__)
Echo = Callable[[str], None]


@dataclass(frozen=True)
class DemoSize:
    image: int  # square images, pixels
    test: int  # fixed held-out test images
    seed: int  # labelled seed images (round 0)
    probe: int  # fixed probe images from the pool: never selected or trained on
    window: int  # pool images queried and pre-annotated per round
    budget: int  # of which the selector sends this many to people
    train: dict[str, Any]


# Sized for a 2-core CPU: small images, a resnet18 encoder cut to 3 stages with a thin decoder,
# small batches (learning here is bound by the number of steps, not by image size). Every round
# fine-tunes the champion (`train.init_from`) on all labels so far for the same number of epochs,
# so a round's schedule grows with its data.
TINY_UNET = {
    "model_kwargs": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]},
    "pad_divisor": 8,
    "lr": 0.003,
    "batch_size": 4,
    "init_from": "alias:champion",
    # The val split is a few images: its best epoch is mostly noise, the last one saw the most.
    "keep": "last",
    # No early stopping: a tiny model from scratch can sit on "all background" for a few epochs.
    "patience": 0,
}
SMALL = DemoSize(
    image=64, test=8, seed=8, probe=8, window=10, budget=5, train={**TINY_UNET, "epochs": 10}
)
FULL = DemoSize(
    image=64, test=32, seed=8, probe=24, window=36, budget=12, train={**TINY_UNET, "epochs": 60}
)


@dataclass
class ProbeResult:
    """The champion's pre-annotations of the fixed probe set, against the ground truth."""

    model_version: int
    images: int
    changed_share: float  # share of pixels a person would change
    mean_iou: float  # mean over images of the per-image mean IoU (as the per-batch figure)


@dataclass
class RoundResult:
    round: int
    data: str  # where this round's new labels came from
    images_refined: int
    labelled_images: int  # labelled so far (the seed set and every round's batch)
    correction_iou: float | None
    changed_share: float | None
    probe: ProbeResult | None  # the champion that pre-annotated this round's batch, on the probe
    test_mean_iou: float
    per_class_iou: dict[str, float]
    split_hash: str
    model_version: int
    promoted: bool
    reason: str
    train_run_id: str | None
    pipelines: list[str] = field(default_factory=list)  # run folders
    aliases: list[str] = field(default_factory=list)  # at the end of the demo
    champion_test_mean_iou: float = 0.0  # the champion's after this round's register
    champion_per_class_iou: dict[str, float] = field(default_factory=dict)


@dataclass
class DemoResult:
    stamp: str
    seed: int
    strategy: str
    workdir: str
    registered_model: str
    mlflow_ui: str
    report: str
    summary: str
    seconds: float
    rounds: list[RoundResult]
    next_batch: str | None = None
    next_probe: ProbeResult | None = None  # the final champion on the probe set
    verdicts: list[str] = field(default_factory=list)
    pool: str = "plain"  # the synthetic pool (summaries written before it was a choice: plain)

    @classmethod
    def load(cls, uri: str | Path) -> DemoResult:
        """A finished demo's result from its summary.json."""
        data = storage.read_json(uri)
        rounds = []
        for r in data.pop("rounds"):
            probe = r.pop("probe")
            rounds.append(RoundResult(**r, probe=ProbeResult(**probe) if probe else None))
        probe = data.pop("next_probe")
        return cls(**data, rounds=rounds, next_probe=ProbeResult(**probe) if probe else None)

    def figures(self) -> LoopFigures:
        """What the loop's yield goals read (pipelines.demo.loop_goals)."""
        measured = [r for r in self.rounds if r.probe is not None]
        return LoopFigures(
            champion_miou=[r.champion_test_mean_iou for r in self.rounds],
            probe_changed=[r.probe.changed_share for r in measured],
            probe_iou=[r.probe.mean_iou for r in measured],
            class_iou=dict(self.rounds[-1].champion_per_class_iou),
        )


# ---------------------------------------------------------------- config


def demo_settings(
    size: DemoSize, workdir: Path, name: str, cvat: bool, seed: int, pool: str = "field"
) -> dict[str, Any]:
    """The demo's config layer: over the config file's values, under the `-o` overrides."""
    return {
        "project": {"subname": name},
        "io": {"out_root": str(workdir / "runs")},
        "db": {"url": f"sqlite:///{workdir / 'images.db'}", "table": "images"},
        "mlflow": {"registered_model": name},
        "kfp": {"local_root": str(workdir / "kfp")},
        "cvat": {"backend": "cvat" if cvat else "folder", "folder": str(workdir / "annotation")},
        # People finish a CVAT job by setting its state to completed, whatever its stage. A
        # frame they leave without shapes in a completed job is bare soil (the synthetic fields
        # include empty ones): CVAT exports no mask for it, so say it is background.
        "download_cvat": {"job_state": "completed", "missing_mask": "empty"} if cvat else {},
        "infer": {"num_workers": 0},
        # Field pool: a session (batch_id, one plot's burst) gets a second pick of the
        # embedding strategies only once every session in the window has one.
        "select": {"budget": size.budget, "seed": seed}
        | ({"group_by": "batch_id"} if pool == "field" else {}),
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
            "seed": seed,
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
    probe: list[str]  # a fixed random sample of the pool, left out of every window
    windows: list[list[str]]  # pool ids per round's batch (1-based: windows[r - 1])
    testset_uri: str

    def truth(self, record_id: str):
        if record_id not in self.masks:
            raise SegloopError(f"record {record_id} is not in the demo's synthetic dataset")
        return load_mask(self.masks[record_id])


def make_demo_data(
    cfg: SegloopConfig,
    size: DemoSize,
    rounds: int,
    prefix: str,
    seed: int = 0,
    pool: str = "field",
) -> DemoData:
    """The synthetic dataset in S3, the image table, the fixed held-out test set, the seed set,
    the probe set and each round's window of the pool. `pool`: `field` (plot sessions of
    near-duplicate shots, a rare weed; the test and seed sets one shot per session) or
    `plain` (independent images; see pipelines.demo.synthetic_field)."""
    n = size.test + size.seed + size.probe + (rounds + 1) * size.window
    synth = make_dataset(
        storage.join(prefix, "data"),
        n,
        seed=seed,
        db_url=cfg.db.url,
        table=cfg.db.table,
        size=(size.image, size.image),
        pool=pool,
        singles=size.test + size.seed if pool == "field" else 0,
    )
    ids = synth.ids
    test, labelled = ids[: size.test], ids[size.test : size.test + size.seed]
    pool_ids = ids[size.test + size.seed :]
    probe = sorted(random.Random(seed).sample(pool_ids, size.probe))
    probe_ids = set(probe)
    rest = [i for i in pool_ids if i not in probe_ids]
    windows = [rest[i : i + size.window] for i in range(0, len(rest), size.window)]
    labels = LabelSet.load(synth.labels_uri)
    masks = {r["image_id"]: r["mask_uri"] for r in synth.records}
    images = {r["image_id"]: r["image_uri"] for r in synth.records}
    # The held-out test set in the dataset layout preprocess reads (images/, masks/, labels.json).
    testset = storage.join(prefix, "testset")
    for rid in test:
        storage.copy(images[rid], storage.join(testset, "images", storage.name(images[rid])))
        storage.copy(masks[rid], storage.join(testset, "masks", f"{rid}.png"))
    labels.save(storage.join(testset, "labels.json"))
    return DemoData(
        labels, synth.labels_uri, masks, images, test, labelled, probe, windows, testset
    )


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
    """The query filter for one round's window of the pool (its ids)."""
    return [f"image_id={','.join(ids)}"]


def measure_probe(
    cfg: SegloopConfig, data: DemoData, model_uri: str, version: int, out: Path
) -> ProbeResult:
    """Pre-annotate the probe set with `model_uri` (as infer does for a batch) and measure what
    a person would change against the ground truth."""
    from components.download_cvat.stage import correction
    from components.infer.stage import run_infer

    records = out / "records.jsonl"
    write_jsonl(records, [{"image_id": i, "image_uri": data.images[i]} for i in data.probe])
    run_infer(cfg, records=str(records), out=str(out / "infer"), model=model_uri)
    manifest = {e["record_id"]: e for e in read_jsonl(out / "infer" / "manifest.jsonl")}
    changed = pixels = 0
    ious = []
    for rid in data.probe:
        entry = manifest.get(rid) or {}
        if entry.get("status") != "ok":
            raise SegloopError(
                f"probe image {rid} was not pre-annotated ({entry.get('reason', 'no result')}); "
                f"see {out / 'infer' / 'manifest.jsonl'}"
            )
        effort = correction(
            load_mask(out / "infer" / entry["mask"]), data.truth(rid), data.labels.num_classes
        )
        changed += effort["changed_pixels"]
        pixels += effort["pixels"]
        ious.append(effort["iou"])
    return ProbeResult(version, len(ious), changed / pixels, sum(ious) / len(ious))


# ---------------------------------------------------------------- results of a pipeline run


def _out(result: LocalRunResult, task: str, output: str) -> str:
    try:
        return result.task(task).outputs[output]
    except KeyError as exc:
        raise SegloopError(
            f"pipeline {result.pipeline} in {result.run_dir} has no output {task}/{output}"
        ) from exc


def collect_round(
    number: int,
    data_source: str,
    result: LocalRunResult,
    runs: list[str],
    previous: RoundResult | None = None,
    probe: ProbeResult | None = None,
) -> RoundResult:
    """One round's numbers from its pipeline outputs. `previous`: the round before (its
    champion stays champion unless this round's model is promoted, and its labelled images
    count); round 0 has none, and its labels are no corrections of pre-annotations."""
    download = storage.read_json(Path(_out(result, "download-cvat", "dataset")) / "metrics.json")
    evaluation = storage.read_json(Path(_out(result, "evaluate", "evaluation")) / "metrics.json")
    registration = storage.read_json(
        Path(_out(result, "register", "registration")) / "register.json"
    )
    correction = download.get("correction") or {}
    measured = previous is not None and bool(correction.get("images"))
    images = int(download["images"])
    r = RoundResult(
        round=number,
        data=data_source,
        images_refined=images,
        labelled_images=images + (previous.labelled_images if previous else 0),
        correction_iou=correction.get("mean_iou") if measured else None,
        changed_share=correction.get("changed_share") if measured else None,
        probe=probe,
        test_mean_iou=float(evaluation["mean_iou"]),
        per_class_iou={k: v for k, v in (evaluation.get("iou") or {}).items() if v is not None},
        split_hash=str(evaluation["split_hash"]),
        model_version=int(registration["version"]),
        promoted=bool(registration["promoted"]),
        reason=str(registration["reason"]),
        train_run_id=registration.get("run_id"),
        pipelines=runs,
    )
    if r.promoted or previous is None:  # this round's model is the champion now
        r.champion_test_mean_iou, r.champion_per_class_iou = r.test_mean_iou, dict(r.per_class_iou)
    else:
        r.champion_test_mean_iou = previous.champion_test_mean_iou
        r.champion_per_class_iou = dict(previous.champion_per_class_iou)
    return r


# ---------------------------------------------------------------- the demo


def _banner(echo: Echo, text: str) -> None:
    echo(f"── {text}")


def quiet_console() -> None:
    """The demo tells its own story: no in-process INFO lines, no MLflow "View run" links (the
    summary ends with the MLflow UI address), no progress bar per model download."""
    logging.getLogger().setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


OPENMP_WAIT = "PASSIVE"


def passive_openmp() -> None:
    """The demo's task processes and servers (they inherit this environment) let OpenMP's
    idle threads sleep instead of spinning for work: next to other busy processes on a few
    cores, the spinning threads take the CPU the working ones need. Measured with the demo's
    training step, 2 threads in a 1-CPU cgroup: 1.5 s alone and 2.9-9.4 s beside a second such
    process with the default policy, 0.19-0.25 s with PASSIVE (docs/demo.md). A user's own
    OMP_WAIT_POLICY wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", OPENMP_WAIT)


def run_demo(
    config_path: str | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    *,
    small: bool = False,
    rounds: int = 3,
    seed: int = 0,
    workdir: str | Path | None = None,
    wait: bool = False,
    wait_timeout_s: float = 7200,
    poll_s: float = 10,
    echo: Echo = print,
    pool: str = "field",
    window: int | None = None,
) -> DemoResult:
    """The loop as the module docstring tells it: stack, data, round 0, rounds 1..R, summary.
    `window`: pool images the champion pre-annotates per round (default: the size's)."""
    if rounds < 1:
        raise SegloopError(f"--rounds must be at least 1, got {rounds}")
    size = SMALL if small else FULL
    if window is not None:
        if window < size.budget:
            raise SegloopError(
                f"--window must be at least the budget of {size.budget} images, got {window}"
            )
        size = replace(size, window=window)
    passive_openmp()
    demo = DemoRun.configure(config_path, overrides, size, workdir, echo, seed, pool)
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
    seed: int
    stamp: str
    run_name: str  # task names and the registered model are this run's own
    work: Path
    echo: Echo
    started: float
    pool: str = "field"  # the synthetic pool: field or plain
    mlflow_uri: str = ""
    data: DemoData | None = None
    results: list[RoundResult] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)  # every round's download, for preprocess
    upload_dir: str = ""  # the batch pre-annotated last, waiting for people
    probe: ProbeResult | None = None  # the current champion on the probe set

    @classmethod
    def configure(
        cls,
        config_path: str | None,
        overrides: tuple[str, ...] | list[str],
        size: DemoSize,
        workdir: str | Path | None,
        echo: Echo,
        seed: int = 0,
        pool: str = "field",
    ) -> DemoRun:
        started = time.monotonic()
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        user = load_config(config_path, list(overrides))
        use_cvat = bool(user.cvat.host or os.environ.get("CVAT_HOST"))
        run_name = f"{user.project.name}-{stamp}"
        work = Path(workdir or Path("runs") / "demo" / stamp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        settings = demo_settings(size, work, run_name, use_cvat, seed, pool)
        cfg = load_config(config_path, list(overrides), extra=settings)
        return cls(cfg, size, seed, stamp, run_name, work, echo, started, pool=pool)

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
        self.data = make_demo_data(self.cfg, self.size, rounds, prefix, self.seed, self.pool)
        self.cfg = _with(
            self.cfg,
            project={"labels": self.data.labels_uri},
            preprocess={"test_inputs": [self.data.testset_uri]},
        )
        size = self.size
        self.echo(
            f"synthetic {self.pool} dataset (seed {self.seed}): {len(self.data.masks)} images of "
            f"{size.image}x{size.image} px in {prefix}/data; fixed held-out test set "
            f"{len(self.data.test)}, labelled seed set {len(self.data.seed)}, probe set "
            f"{len(self.data.probe)}; each round the champion pre-annotates {size.window} pool "
            f"images and select ({self.cfg.select.strategy}) sends {size.budget} to people"
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
        from components.upload_cvat.stage import run_upload_cvat

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
        self.results.append(collect_round(0, "seed (ground truth)", training, runs))
        self.upload_dir = _out(pre, "upload-cvat", "tasks")
        self.measure_probe(0)

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
        runs = [str(result.run_dir)]
        self.results.append(
            collect_round(number, source, result, runs, self.results[-1], self.probe)
        )
        self.samples += most_changed_samples(dataset, self.upload_dir, 2, round_number=number)
        self.upload_dir = _out(result, "upload-cvat", "tasks")
        self.measure_probe(number)

    def measure_probe(self, number: int) -> None:
        """The champion after round `number` (the one that pre-annotates the next batch) on the
        probe set: what a person would change on typical new images."""
        alias = self.cfg.register.champion_alias
        version = current_version(self.cfg, self.registered_model, alias)
        self.probe = measure_probe(
            self.cfg,
            self.data,
            f"models:/{self.registered_model}@{alias}",
            version,
            self.work / f"round{number}" / "probe",
        )

    def finish(self) -> DemoResult:
        """5. Aliases as the registry holds them, the loop report, summary.json, MLflow."""
        name = self.registered_model
        aliases = current_aliases(self.cfg, name)
        for r in self.results:
            r.aliases = aliases.get(r.model_version, [])
        demo = DemoResult(
            stamp=self.stamp,
            seed=self.seed,
            strategy=self.cfg.select.strategy,
            workdir=str(self.work),
            registered_model=name,
            mlflow_ui=f"{self.mlflow_uri}/#/models/{name}",
            report=str(self.work / "loop_report.html"),
            summary=str(self.work / "summary.json"),
            seconds=round(time.monotonic() - self.started, 1),
            rounds=self.results,
            next_batch=self.upload_dir,
            next_probe=self.probe,
            pool=self.pool,
        )
        demo.verdicts = [v.line() for v in verdicts(demo.figures())]
        write_loop_report(
            demo.report,
            [round_summary(r) for r in self.results],
            self.samples,
            self.data.labels,
            title=f"segloop demo {self.stamp}: registered model {name}",
            verdicts=demo.verdicts,
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
        labelled_images=r.labelled_images,
        champion_miou=r.champion_test_mean_iou,
        probe_iou=r.probe.mean_iou if r.probe else None,
        probe_changed_share=r.probe.changed_share if r.probe else None,
        model_version=str(r.model_version),
        alias=",".join(r.aliases) or None,
        per_class_iou=r.per_class_iou,
    )


def current_version(cfg: SegloopConfig, name: str, alias: str) -> int:
    """The version `alias` points at now."""
    return int(tracking.client(cfg).get_model_version_by_alias(name, alias).version)


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
            {
                "segloop.demo": demo.stamp,
                "segloop.registered_model": demo.registered_model,
                "segloop.demo_seed": str(demo.seed),
                "segloop.select_strategy": demo.strategy,
            }
        )
        for r in demo.rounds:
            values = {
                "test_mean_iou": r.test_mean_iou,
                "champion_test_mean_iou": r.champion_test_mean_iou,
                "images_refined": r.images_refined,
                "labelled_images": r.labelled_images,
            }
            if r.probe:
                values["probe_changed_share"] = r.probe.changed_share
                values["probe_iou"] = r.probe.mean_iou
            if r.correction_iou is not None:
                values["correction_iou"] = r.correction_iou
            if r.changed_share is not None:
                values["correction_changed_share"] = r.changed_share
            mlflow.log_metrics(values, step=r.round)
        mlflow.log_artifact(demo.report)
        mlflow.log_artifact(demo.summary)


def _fmt(value: float | None, pattern: str = "{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


SUMMARY_COLUMNS = (
    f"{'round':>5}  {'labelled':>8}  {'labels from':<20} {'batch IoU':>9} {'batch px':>8}  "
    f"{'probe IoU':>9} {'probe px':>8}  {'test mIoU':>9} {'champion':>8}  {'version':>7} "
    f"{'promoted':>8}  aliases now"
)


def _row(r: RoundResult) -> str:
    probe = r.probe
    return (
        f"{r.round:>5}  {r.labelled_images:>8}  {r.data.removeprefix('refined by the '):<20} "
        f"{_fmt(r.correction_iou):>9} {_fmt(r.changed_share, '{:.1%}'):>8}  "
        f"{_fmt(probe and probe.mean_iou):>9} {_fmt(probe and probe.changed_share, '{:.1%}'):>8}  "
        f"{r.test_mean_iou:>9.3f} {r.champion_test_mean_iou:>8.3f}  {r.model_version:>7} "
        f"{'yes' if r.promoted else 'no':>8}  {','.join(r.aliases) or '-'}"
    )


def summary_text(demo: DemoResult) -> str:
    """Where to look, why each round was (not) promoted, then the table and the verdicts on the
    loop's goals: the last thing shown."""
    last = demo.next_probe
    lines = [
        "",
        f"loop report:     {demo.report}",
        f"summary:         {demo.summary}",
        f"MLflow UI:       {demo.mlflow_ui}",
        f"next batch:      {demo.next_batch} (pre-annotated by the champion, ready for people)",
        f"took {demo.seconds:.0f} s; the stack keeps running (stop it with `segloop down`)",
        "",
        *(f"round {r.round}: {r.reason}" for r in demo.rounds[1:]),
        "batch: this round's batch, pre-annotated by the champion and refined (IoU of the "
        "pre-annotation against the refined mask, 1 = nothing to correct; px: share of pixels "
        "changed); it depends on which images the selector picked. probe: the same champion on "
        f"the fixed probe set ({last.images if last else 0} typical pool images, never selected "
        "or trained on), against the ground truth. test mIoU: this round's model; champion: "
        "the champion after the round's register; both on the same held-out test set (test "
        f"hash {demo.rounds[0].split_hash[:12]}).",
        "",
        f"segloop demo {demo.stamp} (seed {demo.seed}, select.strategy={demo.strategy}): summary",
        SUMMARY_COLUMNS,
        *(_row(r) for r in demo.rounds),
    ]
    if last:
        lines.append(
            f"{'next':>5}  {'':>8}  {'':<20} {'':>9} {'':>8}  {last.mean_iou:>9.3f} "
            f"{last.changed_share:>8.1%}  (the final champion, v{last.model_version})"
        )
    lines += ["", "the loop's goals (this run; `python -m benchmarks loop` over seeds):"]
    lines += [f"  {v}" for v in demo.verdicts]
    return "\n".join(lines)
