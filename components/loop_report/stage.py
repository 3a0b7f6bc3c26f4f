"""`run_loop_report`: the loop report of a pipeline round, from the registry and the download.

Rounds are the registered versions of the project's model, oldest first: test mean IoU and
per-class IoU from the tags `register` puts on each version, aliases from the registered model.
The correction effort (how much people changed the pre-annotations) is known for the current
round only: it comes from this round's `download-cvat` output, which also gives the samples
(image, the pre-annotation it compared against, the refined mask).

Output folder: `loop_report.html` (self-contained), `rounds.json`, `metrics.json`, `cfg.yaml`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from components.core import storage, tracking
from components.core.artifacts import read_jsonl, write_metrics
from components.core.config import SharedConfig, save_resolved
from components.core.errors import SegloopError
from components.core.labels import LabelSet
from components.core.tracking import TAG
from components.loop_report.page import RoundSummary, Sample, render_loop_report
from components.loop_report.settings import LoopReportConfig

log = logging.getLogger(__name__)


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def registry_rounds(cfg: SharedConfig, name: str) -> list[RoundSummary]:
    """One round per registered version, oldest first (correction effort left unknown)."""
    from mlflow.exceptions import MlflowException

    client = tracking.client(cfg)
    try:
        versions = client.search_model_versions(f"name = '{name}'")
        # Version search results leave aliases out; the registered model holds the alias map.
        aliases: dict[str, list[str]] = {}
        for alias, version in client.get_registered_model(name).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
    except MlflowException as exc:
        raise SegloopError(
            f"MLflow registry at {tracking.tracking_uri(cfg)}: cannot read model {name!r}: "
            f"{exc.message}; run `register` first or set mlflow.registered_model"
        ) from exc
    rounds = []
    for number, mv in enumerate(sorted(versions, key=lambda v: int(v.version)), start=1):
        tags = mv.tags or {}
        per_class = {
            key[len(f"{TAG}iou.") :]: float(value)
            for key, value in tags.items()
            if key.startswith(f"{TAG}iou.") and _float(value) is not None
        }
        rounds.append(
            RoundSummary(
                round=number,
                images_refined=None,  # known for the current round only (its download)
                correction_iou=None,
                changed_share=None,
                test_miou=_float(tags.get(f"{TAG}mean_iou")),
                model_version=str(mv.version),
                alias=",".join(sorted(aliases.get(str(mv.version), []))) or None,
                per_class_iou=per_class,
            )
        )
    return rounds


def download_samples(download: str, limit: int, round_number: int | None = None) -> list[Sample]:
    """The images people changed most, next to the pre-annotation the download compared them
    with (kept in the upload-cvat output the download names; none if it names none)."""
    provenance = storage.read_json(storage.join(download, "provenance.json"))
    upload_dir = provenance.get("upload_dir")
    if not upload_dir or not storage.exists(storage.join(upload_dir, "tasks.json")):
        return []
    return most_changed_samples(download, upload_dir, limit, round_number=round_number)


def most_changed_samples(
    download: str, upload_dir: str, limit: int, *, round_number: int | None = None
) -> list[Sample]:
    """The download's images people changed most, each with its pre-annotation from the
    upload-cvat output `upload_dir` (its tasks.json names the masks as uploaded); the samples
    say they come from round `round_number`."""
    tasks = storage.read_json(storage.join(upload_dir, "tasks.json"))
    pre = {
        str(f["record_id"]): storage.join(upload_dir, f["preannotation"])
        for t in tasks.get("tasks", [])
        for f in t.get("frames", [])
        if f.get("preannotation")
    }
    entries = [
        e
        for e in read_jsonl(storage.join(download, "manifest.jsonl"))
        if e.get("status") == "ok"
        and e.get("image")
        and e.get("correction")
        and str(e["record_id"]) in pre
    ]
    entries.sort(key=lambda e: (-e["correction"]["changed_share"], str(e["record_id"])))
    return [
        Sample(
            str(e["record_id"]),
            storage.join(download, e["image"]),
            pre[str(e["record_id"])],
            storage.join(download, e["mask"]),
            round=round_number,
        )
        for e in entries[:limit]
    ]


def run_loop_report(
    cfg: LoopReportConfig, *, download: str, registry_model: str | None = None, out: str
) -> dict[str, Any]:
    """Write the loop report of the registry's rounds and this round's download to `out`."""
    for required in ("metrics.json", "provenance.json", "manifest.jsonl", "labels.json"):
        if not storage.exists(storage.join(download, required)):
            raise SegloopError(f"{download} has no {required}: is it a download-cvat output?")
    name = registry_model or tracking.registered_model_name(cfg)
    rounds = registry_rounds(cfg, name)
    if not rounds:
        raise SegloopError(f"registered model {name!r} has no versions yet: run `register` first")
    # This round's download is what people refined for the newest version.
    downloaded = storage.read_json(storage.join(download, "metrics.json"))
    correction = downloaded.get("correction") or {}
    current = rounds[-1]
    current.images_refined = downloaded.get("images")
    if correction.get("images"):
        current.correction_iou = correction.get("mean_iou")
        current.changed_share = correction.get("changed_share")
    samples = download_samples(download, cfg.loop_report.samples, round_number=current.round)
    html = render_loop_report(
        rounds,
        samples,
        LabelSet.load(storage.join(download, "labels.json")),
        title=f"segloop loop report: registered model {name}",
        # The renderer shows pre-annotation next to refined; without the former, say why.
        samples_note="No samples: the download output names no upload-cvat output with "
        "pre-annotations (download_cvat.upload_dir), so there is nothing to compare the refined "
        "masks with.",
    )
    summary = {
        "registered_model": name,
        "rounds": len(rounds),
        "model_version": int(current.model_version),
        "test_mean_iou": current.test_miou,
        "images_refined": current.images_refined,
        "correction_iou": current.correction_iou,
        "changed_share": current.changed_share,
        "samples": len(samples),
    }
    with storage.output_dir(out, resume=False) as root:
        (root / "loop_report.html").write_text(html, encoding="utf-8")
        storage.write_json(root / "rounds.json", [asdict(r) for r in rounds])
        write_metrics(root, summary)
        save_resolved(cfg, root)
    log.info("loop report: %d rounds of %s, %d samples", len(rounds), name, len(samples))
    return summary
