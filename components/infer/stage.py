"""The `infer` stage: pre-annotate images with a predictor (plain Python, no KFP).

`run_infer(cfg, records=..., images=..., out=..., model=None) -> metrics` reads query records
(`records.jsonl`: `image_id`, `image_uri`) or a folder/prefix of images (record id = path
relative to it without the suffix), decodes images ahead of the model (in threads on CPU, in
DataLoader worker processes on CUDA; see `decoded`), runs the tiled
engine (`components.core.inference`) and writes into `out` (a folder or s3:// prefix):

  masks/<record_id>.png     class ids (uint8), same size as the EXIF-rotated image
  overlays/<record_id>.jpg  optional, coloured classes over the image (downscaled)
  coco/<record_id>.json     this image's COCO annotations (kept for resuming)
  predictions.json          COCO: images (with record_id, image_uri), categories, annotations
  manifest.jsonl            one line per image: record_id, image_uri, mask, overlay, width,
                            height, pixels (per class name), uncertainty, ms, status, reason
  metrics.json              counts, megapixels, MP/s, failures, device, settings
  labels.json, model.json (smp), cfg.yaml
  settings.json             the settings that shape these outputs (`OUTPUT_SETTINGS`, the model)

Images already `ok` in the manifest are skipped; an output made with other settings is refused
unless `infer.overwrite`, which starts the folder clean; a local output is locked while a run
writes it (`components.core.outputs`). Failures are recorded and skipped; the stage fails when
more than `infer.max_failures` images fail.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image

from components.core import artifacts, images, outputs, storage
from components.core.config import save_resolved, stage_run_dir
from components.core.cpu_budget import apply_torch_threads, cpu_budget
from components.core.device import pick_device
from components.core.errors import SegloopError
from components.core.inference import TileEngine
from components.core.labels import LabelSet
from components.core.postprocess import (
    Decider,
    ImageAccumulator,
    coco_annotations,
    remove_small_components,
)
from components.core.precision import pick_amp
from components.core.predictor import Predictor, SmpPredictor, enable_embeddings
from components.core.predictors.classmap import apply_class_handling
from components.core.predictors.loading import make_predictor
from components.core.progress import track
from components.core.version import segloop_version
from components.infer.settings import REGISTERED_MODEL, InferConfig, InferSettings

log = logging.getLogger("segloop.infer")


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Record:
    record_id: str
    image_uri: str


def records_from_jsonl(uri: str) -> list[Record]:
    """Query records: each names an image by an absolute path or a file:// or s3:// URI.

    `uri` may also be a query output folder (or KFP artifact folder) holding `records.jsonl`.
    Relative locations are refused, not guessed: `segloop query` resolves them against
    `query.image_root`, the root the image table's relative paths hang from.
    """
    if storage.is_dir(uri) and storage.exists(storage.join(str(uri), "records.jsonl")):
        uri = storage.join(str(uri), "records.jsonl")
    return [_record(row, f"{uri}:{n}") for n, row in enumerate(artifacts.read_jsonl(uri), 1)]


def _record(row: dict[str, Any], where: str) -> Record:
    """One records.jsonl row as a Record; a row that cannot name an image is refused."""
    key = "image_id" if "image_id" in row else "record_id"
    rid, image_uri = row.get(key), row.get("image_uri")
    if rid is None or str(rid).strip() == "":
        got = "missing" if key not in row else ("null" if rid is None else "empty")
        raise SegloopError(
            f"{where}: the record's image_id is {got}; every record needs an id "
            "(pass the records.jsonl written by `segloop query`)"
        )
    if image_uri is None or str(image_uri).strip() == "":
        got = "missing" if "image_uri" not in row else ("null" if image_uri is None else "empty")
        raise SegloopError(f"{where}: record {rid!r} has its image_uri {got}")
    image_uri = str(image_uri)
    scheme = storage.unsupported_scheme(image_uri)
    if scheme:
        raise SegloopError(
            f"{where}: record {rid!r}: image_uri {image_uri!r}: {scheme}:// is not supported; "
            f"images are read from {storage.SUPPORTED_LOCATIONS}"
        )
    if not (storage.is_s3(image_uri) or storage.local_path(image_uri).is_absolute()):
        raise SegloopError(
            f"{where}: record {rid!r}: image_uri {image_uri!r} is a relative path; records name "
            "images by absolute path or URI (query with --image-root, the folder or s3:// "
            "prefix the table's relative paths hang from)"
        )
    return Record(str(rid), image_uri)


def records_from_images(uri: str) -> list[Record]:
    scheme = storage.unsupported_scheme(uri)
    if scheme:
        raise SegloopError(
            f"--images {uri}: {scheme}:// is not supported; images are read from "
            f"{storage.SUPPORTED_LOCATIONS}"
        )
    root = str(uri).rstrip("/")
    files = [f for f in storage.list_files(root) if f.lower().endswith(images.IMAGE_SUFFIXES)]
    if not files:
        raise SegloopError(
            f"no images ({', '.join(images.IMAGE_SUFFIXES)}) under {uri}; check the folder or prefix"
        )
    base = root if storage.is_s3(root) else str(storage.local_path(root))
    out = []
    for f in files:
        rel = f[len(base) :].lstrip("/") if f.startswith(base) else storage.name(f)
        out.append(Record(str(PurePosixPath(rel).with_suffix("")), f))
    return out


def _check_ids(records: list[Record]) -> None:
    seen: dict[str, str] = {}
    for r in records:
        if r.record_id in seen:
            raise SegloopError(
                f"record id {r.record_id!r} appears twice ({seen[r.record_id]} and {r.image_uri}); "
                "record ids name the output files and must be unique"
            )
        seen[r.record_id] = r.image_uri


def _unsafe_id(rid: str) -> str | None:
    parts = PurePosixPath(rid).parts
    if not rid or rid.startswith("/") or "\\" in rid or any(p in ("..", ".") for p in parts):
        return f"record id {rid!r} cannot name an output file (empty, absolute or with '..')"
    return None


class _Decode(torch.utils.data.Dataset):
    """Decodes one image per item in a decoding worker; failures come back as reasons."""

    def __init__(self, records: list[Record]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        uri = self.records[i].image_uri
        try:
            if not storage.exists(uri):
                return {"index": i, "image": None, "error": f"{uri}: no such file or object"}
            array = images.load_rgb(uri)
            with warnings.catch_warnings():
                # PIL hands out read-only arrays; the engine only reads the image.
                warnings.simplefilter("ignore", UserWarning)
                tensor = torch.from_numpy(array)
            return {"index": i, "image": tensor, "error": ""}
        except SegloopError as exc:
            return {"index": i, "image": None, "error": str(exc)}
        except Exception as exc:  # a worker must never die on one bad image
            return {"index": i, "image": None, "error": f"{uri}: {type(exc).__name__}: {exc}"}


def _worker_init(_: int) -> None:
    torch.set_num_threads(
        1
    )  # decoding is the worker's job; compute threads stay in the main process


def decode_workers(requested: int | None, device: torch.device) -> int:
    """`infer.num_workers`, or from the CPU budget: on CPU 2 decode threads (1 in a 1-CPU
    budget: the forward passes need it); on CUDA one process per CPU but the main one's, 1-8."""
    if requested is not None:
        return requested
    threads = cpu_budget().threads
    if device.type == "cpu":
        return min(2, threads)
    return min(8, max(1, threads - 1))


def _identity(item: Any) -> Any:
    return item


def decoded(records: list[Record], num_workers: int, prefetch: int, processes: bool = True):
    """Yield decoded items in record order, decoding up to `num_workers * prefetch` images
    ahead in `num_workers` worker processes (DataLoader), or threads when `processes` is false;
    0 workers: in the calling thread. No more workers than images.

    `segment` uses threads on CPU: while a forked worker lives, the main process's memory is
    shared copy-on-write, so the forward passes' writes to reused heap pages fault and copy
    them, and each worker costs a fork and a join (measured on 2 cores, Unet-resnet34, two
    1024x768 images: processes 0.93 of the forward-only limit, threads 0.97). On CUDA the
    forward passes are on the GPU and decoding can be the bottleneck: processes."""
    num_workers = min(num_workers, len(records))
    if num_workers and not processes:
        yield from _decoded_in_threads(records, num_workers, prefetch)
        return
    loader = torch.utils.data.DataLoader(
        _Decode(records),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        prefetch_factor=prefetch if num_workers else None,
        collate_fn=_identity,
        worker_init_fn=_worker_init if num_workers else None,
        persistent_workers=False,
    )
    yield from loader


def _decoded_in_threads(records: list[Record], num_workers: int, prefetch: int):
    """`decoded` in a thread pool: PIL decodes and S3 reads release the GIL."""
    dataset = _Decode(records)
    upcoming = iter(range(len(records)))
    pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="segloop-decode")
    try:
        ahead = deque(
            pool.submit(dataset.__getitem__, i) for i in islice(upcoming, num_workers * prefetch)
        )
        while ahead:
            item = ahead.popleft().result()
            following = next(upcoming, None)
            if following is not None:
                ahead.append(pool.submit(dataset.__getitem__, following))
            yield item
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- settings resolved against the predictor


def resolve_thresholds(threshold: Any, labels: LabelSet) -> list[float] | None:
    if threshold is None:
        return None
    fg = labels.names[1:]
    if isinstance(threshold, int | float):
        values = [float(threshold)] * len(fg)
    else:
        unknown = sorted(set(threshold) - set(fg))
        if unknown:
            raise SegloopError(
                f"infer.threshold names unknown classes {unknown}; the model's classes are {fg}"
            )
        values = [float(threshold.get(name, 0.5)) for name in fg]
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise SegloopError(f"infer.threshold values must lie in 0..1, got {bad}")
    return values


# ---------------------------------------------------------------- per-image outputs


def _overlay(image: np.ndarray, mask: np.ndarray, labels: LabelSet, max_side: int) -> np.ndarray:
    h, w = mask.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    return images.overlay(image, mask, labels.palette())


class _Writer:
    """Writes one finished image's files and manifest line (in a background thread)."""

    def __init__(self, folder: Path, settings, labels: LabelSet, manifest: artifacts.Manifest):
        self.folder = folder
        self.s = settings
        self.labels = labels
        self.manifest = manifest
        self.pixels_ok = 0

    def write(
        self,
        record: Record,
        acc: ImageAccumulator,
        image: np.ndarray | None,
        started: float,
    ) -> None:
        try:
            entry = self._outputs(record, acc, image)
            entry["ms"] = round((time.perf_counter() - started) * 1000, 1)
            self.pixels_ok += acc.mask.size
        except Exception as exc:  # one image's output problem must not stop the others
            log.exception("writing outputs for %s failed", record.record_id)
            entry = _failed(record, f"cannot write outputs: {type(exc).__name__}: {exc}")
        self.manifest.add(entry)

    def _outputs(
        self, record: Record, acc: ImageAccumulator, image: np.ndarray | None
    ) -> dict[str, Any]:
        mask = acc.mask
        removed = remove_small_components(mask, self.s.min_area)
        rel_mask = f"masks/{record.record_id}.png"
        images.save_mask_png(self.folder / rel_mask, mask)
        rel_overlay = None
        if image is not None:
            rel_overlay = f"overlays/{record.record_id}.jpg"
            images.save_rgb(
                self.folder / rel_overlay,
                _overlay(image, mask, self.labels, self.s.overlay_max_side),
            )
        if self.s.coco:
            anns = coco_annotations(mask, acc.conf, self.labels.num_classes)
            storage.write_json(
                self.folder / "coco" / f"{record.record_id}.json",
                {"width": mask.shape[1], "height": mask.shape[0], "annotations": anns},
            )
        counts = np.bincount(mask.ravel(), minlength=self.labels.num_classes)
        return {
            "record_id": record.record_id,
            "image_uri": record.image_uri,
            "status": artifacts.OK,
            "reason": None,
            "mask": rel_mask,
            "overlay": rel_overlay,
            "width": int(mask.shape[1]),
            "height": int(mask.shape[0]),
            "pixels": {name: int(counts[i]) for i, name in enumerate(self.labels.names)},
            "removed_pixels": removed,
            "uncertainty": acc.uncertainty(),
        } | ({"embedding": acc.embedding()} if acc.embedding_tiles else {})


def _failed(record: Record, reason: str) -> dict[str, Any]:
    return {
        "record_id": record.record_id,
        "image_uri": record.image_uri,
        "status": artifacts.FAILED,
        "reason": reason,
    }


def write_coco(
    folder: Path,
    records: list[Record],
    manifest: artifacts.Manifest,
    labels: LabelSet,
    model: str | None,
) -> int:
    """Assemble predictions.json from the per-image files of every `ok` record; returns #annotations."""
    coco_images, annotations = [], []
    for image_id, record in enumerate(records, start=1):
        entry = manifest.entries.get(record.record_id)
        part = folder / "coco" / f"{record.record_id}.json"
        if not entry or entry.get("status") != artifacts.OK or not part.exists():
            continue
        data = storage.read_json(part)
        coco_images.append(
            {
                "id": image_id,
                "file_name": storage.name(record.image_uri),
                "width": data["width"],
                "height": data["height"],
                "record_id": record.record_id,
                "image_uri": record.image_uri,
            }
        )
        for ann in data["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    categories = [
        {"id": label.id, "name": label.name, "supercategory": "", "color": label.color}
        for label in labels.labels[1:]
    ]
    storage.write_json(
        folder / "predictions.json",
        {
            "info": {"description": "segloop infer", "version": segloop_version(), "model": model},
            "images": coco_images,
            "annotations": annotations,
            "categories": categories,
        },
    )
    return len(annotations)


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def throughput(metrics: dict[str, Any]) -> str:
    """The speed of a run in words; says so when nothing was segmented (no misleading 0 MP/s)."""
    if not metrics["processed"]:
        if metrics["skipped_done"]:
            return f"nothing to process: {_images(metrics['skipped_done'])} already done"
        return "nothing to process: no images in the input"
    if not metrics["megapixels"]:
        return f"nothing segmented: {_images(metrics['processed'])} processed, none succeeded"
    return f"{metrics['mp_per_s']:.2f} MP/s on {metrics['device']}"


# ---------------------------------------------------------------- the stage


def run_infer(
    cfg: InferConfig,
    *,
    records: str | None = None,
    images: str | None = None,
    out: str | None = None,
    model: str | None = None,
    predictor: Predictor | None = None,
) -> dict[str, Any]:
    """Pre-annotate `records` (a records.jsonl) or `images` (a folder/prefix) into `out`.

    `predictor` (an instance) overrides `infer.predictor`/`infer.model` (for library use).
    """
    s = cfg.infer
    apply_torch_threads()  # compute threads from the CPU quota, not the node's cores
    inputs = read_inputs(records, images)
    out = out or stage_run_dir(cfg, "infer")
    device = pick_device(s.device, "infer.device")
    model_uri = model or s.model
    predictor = load_predictor(cfg, model_uri, device, predictor)
    if s.embeddings:  # pooled encoder features per image, for selection (select.strategy)
        enable_embeddings(predictor)
    engine = build_engine(s, predictor, device)

    settings = output_settings(s, model_uri, predictor, engine)
    with outputs.open_output(
        out, "infer", settings, overwrite=s.overwrite, overwrite_hint=OVERWRITE_HINT
    ) as folder:
        write_run_files(cfg, folder, predictor)
        manifest = artifacts.Manifest(folder)
        todo = [r for r in inputs if not manifest.done(r.record_id)]
        skipped = len(inputs) - len(todo)
        if skipped:
            log.info("skipping %d image(s) already done (use --overwrite to redo them)", skipped)
        labels = predictor.info.labels
        decider = Decider(labels.num_classes, resolve_thresholds(s.threshold, labels))
        writer = _Writer(folder, s, labels, manifest)
        seconds = segment(todo, s, engine, decider, writer, manifest)

        # The manifest now describes exactly this input: images removed since an earlier run
        # (typically the bad files that failed there) leave it, so it agrees with the metrics.
        stale = manifest.retain(r.record_id for r in inputs)
        if stale:
            log.info("dropped %d manifest row(s) of images no longer in the input", len(stale))
        n_ann = write_coco(folder, inputs, manifest, labels, model_uri) if s.coco else 0
        metrics = infer_metrics(s, inputs, todo, manifest, writer, engine, seconds, n_ann)
        metrics.update(
            device=str(device),
            predictor=getattr(predictor, "name", type(predictor).__name__),
            model=model_uri,
        )
        artifacts.write_metrics(folder, metrics)
        manifest.compact()
    log.info(
        "infer: %d ok, %d failed, %d skipped, %s -> %s",
        metrics["ok"],
        metrics["failed"],
        skipped,
        throughput(metrics),
        out,
    )
    manifest_uri = storage.join(str(out), "manifest.jsonl")
    for line in failure_lines(metrics, manifest_uri):
        log.warning("infer: %s", line.strip())
    artifacts.check_failures("infer", manifest.failed(), s.max_failures, manifest=manifest_uri)
    return metrics


FAILURES_SHOWN = 5  # failed images named in a run's summary; the manifest has them all


def failure_lines(metrics: dict[str, Any], manifest_uri: str) -> list[str]:
    """The first few failed images with their reasons, then where the manifest is."""
    if not metrics["failed"]:
        return []
    lines = [f"  {f['record_id']}: {f['reason']}" for f in metrics["failures"][:FAILURES_SHOWN]]
    more = metrics["failed"] - len(lines)
    lines.append(f"  {f'... and {more} more; ' if more > 0 else ''}see {manifest_uri}")
    return lines


def read_inputs(records: str | None, images: str | None) -> list[Record]:
    """The records to segment: a records.jsonl, or every image below a folder/prefix."""
    if (records is None) == (images is None):
        raise SegloopError(
            "give exactly one input: --records records.jsonl or --images DIR|s3://prefix"
        )
    inputs = records_from_jsonl(records) if records else records_from_images(images)
    _check_ids(inputs)
    return inputs


def pipeline_model(cfg: InferConfig, model_uri: str) -> str | None:
    """The model a pipeline's infer task uses, resolved from the run's config at run time.

    A non-empty `model_uri` parameter wins; `REGISTERED_MODEL` (active_learning) is the run's
    registered model at `infer.model_alias`; empty is `infer.model`, else for the `smp` predictor
    that same registered model (other predictors may need no model: None)."""
    from components.core.tracking import registered_model_name

    registered = f"models:/{registered_model_name(cfg)}@{cfg.infer.model_alias}"
    if model_uri == REGISTERED_MODEL:
        return registered
    if model_uri:
        return model_uri
    if cfg.infer.model:
        return cfg.infer.model
    return registered if cfg.infer.predictor == "smp" else None


def load_predictor(
    cfg: InferConfig, model_uri: str | None, device: torch.device, predictor: Predictor | None
) -> Predictor:
    """The configured predictor (or the given one), with label mapping/dropping, on `device`.

    The built-in `smp` predictor resolves `models:/` and `runs:/` URIs on the configured MLflow
    server (`tracking.tracking_uri(cfg)`), passed explicitly: never on MLflow's own default."""
    from components.core import tracking
    from components.core.checkpoint import is_mlflow_uri
    from components.core.predictor import build_smp, registered_factory, smp_factory

    s = cfg.infer
    if predictor is None:
        if (
            model_uri
            and is_mlflow_uri(model_uri)
            and registered_factory(s.predictor) is smp_factory
        ):
            server = tracking.tracking_uri(cfg)
            predictor = build_smp(model_uri, device, s.predictor_params, tracking_uri=server)
        else:
            predictor = make_predictor(s.predictor, model_uri, device, s.predictor_params)
    predictor = apply_class_handling(predictor, s.label_map, s.drop, cfg.project.labels)
    return predictor.to(device)


def build_engine(s: InferSettings, predictor: Predictor, device: torch.device) -> TileEngine:
    return TileEngine(
        predictor,
        device,
        tile_size=s.tile_size,
        overlap=s.overlap,
        window=s.window,
        batch_size=s.batch_size,
        amp_dtype=pick_amp(s.amp, device),
        channels_last=s.channels_last,
    )


def write_run_files(cfg: InferConfig, folder: Path, predictor: Predictor) -> None:
    """What describes this run beside its outputs: config, labels, the model's spec."""
    save_resolved(cfg, folder)
    predictor.info.labels.save(folder / "labels.json")
    if isinstance(predictor, SmpPredictor):
        storage.write_text(folder / "model.json", predictor.spec.model_dump_json(indent=2) + "\n")


# The settings that shape infer's outputs: a resumed output must have been made with the same.
# Not: device, batch_size, num_workers, prefetch, channels_last (speed), max_failures, shards.
OUTPUT_SETTINGS = (
    "predictor_params",
    "label_map",
    "drop",
    "overlap",
    "window",
    "threshold",
    "min_area",
    "uncertain_margin",
    "embeddings",
    "coco",
    "overlays",
    "overlay_max_side",
)
OVERWRITE_HINT = "pass --overwrite (infer.overwrite=true)"


def output_settings(
    s: InferSettings, model_uri: str | None, predictor: Predictor, engine: TileEngine
) -> dict[str, Any]:
    """What made an infer output: the model, its classes, the resolved tiling and precision."""
    return {
        **{name: getattr(s, name) for name in OUTPUT_SETTINGS},
        "predictor": getattr(predictor, "name", type(predictor).__name__),
        "model": model_uri,
        "labels": list(predictor.info.labels.names),
        "tile_size": engine.tile,
        "amp": str(engine.amp_dtype).replace("torch.", "") if engine.amp_dtype else "off",
    }


def segment(
    todo: list[Record],
    s: InferSettings,
    engine: TileEngine,
    decider: Decider,
    writer: _Writer,
    manifest: artifacts.Manifest,
) -> float:
    """Decode (workers) -> tile engine (batches across images) -> one output thread that
    writes masks and the manifest. Returns the seconds it took."""
    start = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segloop-write")
    in_flight: list[Future] = []

    def finish_later(record: Record, acc: ImageAccumulator, image, started: float) -> None:
        in_flight.append(pool.submit(writer.write, record, acc, image, started))
        while len(in_flight) > 2:  # bound the finished images held in memory
            in_flight.pop(0).result()

    try:
        for item in track(
            # On CPU in threads: a forked worker shares the main process's memory
            # copy-on-write while it lives, which slows the forward passes (see `decoded`).
            decoded(
                todo,
                decode_workers(s.num_workers, engine.device),
                s.prefetch,
                processes=engine.device.type != "cpu",
            ),
            total=len(todo),
            desc="infer",
            unit="img",
        ):
            record = todo[item["index"]]
            reason = _unsafe_id(record.record_id) or item["error"]
            if reason:  # the manifest has one writer: the output thread
                in_flight.append(pool.submit(manifest.add, _failed(record, reason)))
                continue
            image = item["image"].numpy()
            started = time.perf_counter()
            acc = ImageAccumulator(image.shape[0], image.shape[1], decider, s.uncertain_margin)
            keep = image if s.overlays else None
            engine.submit(
                image,
                acc,
                lambda r=record, a=acc, k=keep, t=started: finish_later(r, a, k, t),
                on_embedding=acc.add_embedding if s.embeddings else None,
            )
            del image, keep
        engine.flush()
        for future in in_flight:
            future.result()
    finally:
        pool.shutdown(wait=True)
    return time.perf_counter() - start


def infer_metrics(
    s: InferSettings,
    inputs: list[Record],
    todo: list[Record],
    manifest: artifacts.Manifest,
    writer: _Writer,
    engine: TileEngine,
    seconds: float,
    annotations: int,
) -> dict[str, Any]:
    failed = manifest.failed()
    megapixels = writer.pixels_ok / 1e6
    return {
        "images": len(inputs),
        "processed": len(todo),
        "skipped_done": len(inputs) - len(todo),
        "ok": len(manifest.ok()),
        "failed": len(failed),
        "annotations": annotations,
        "megapixels": round(megapixels, 3),
        "seconds": round(seconds, 3),
        "mp_per_s": round(megapixels / seconds, 4) if seconds > 0 and megapixels else 0.0,
        "tiles": engine.tiles_run,
        "amp": str(engine.amp_dtype).replace("torch.", "") if engine.amp_dtype else "off",
        "batch_size": s.batch_size,
        "tile_size": engine.tile,
        "failures": [{"record_id": e["record_id"], "reason": e.get("reason")} for e in failed[:50]],
    }
