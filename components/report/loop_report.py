"""The loop report: one self-contained HTML page (pictures embedded) about the rounds so far.

It shows pre-annotations next to the refined masks for a sample of images, mean IoU and
correction effort per round as plots, and per-class IoU per model version. Being one file,
it can be written to the run folder, logged to MLflow and emitted as a KFP `HTML` artifact.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from components.core import storage  # noqa: E402
from components.core.images import load_mask, load_rgb, overlay  # noqa: E402
from components.core.labels import LabelSet  # noqa: E402


@dataclass
class RoundSummary:
    round: int
    images_refined: int | None
    correction_iou: float | None  # mean IoU between pre-annotation and refined mask (1 = no change)
    changed_share: float | None  # share of pixels people changed
    test_miou: float | None
    model_version: str | None
    alias: str | None
    per_class_iou: dict[str, float] = field(default_factory=dict)


@dataclass
class Sample:
    record_id: str
    image_uri: str
    pre_mask_uri: str
    refined_mask_uri: str


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _array_png(array: np.ndarray, max_side: int = 320) -> str:
    image = Image.fromarray(array)
    image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _round_plots(rounds: list[RoundSummary]) -> str:
    xs = [r.round for r in rounds]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].plot(xs, [r.test_miou or 0 for r in rounds], marker="o")
    axes[0].set(title="test mean IoU per round", xlabel="round", ylabel="mean IoU", ylim=(0, 1))
    axes[1].bar(xs, [r.changed_share or 0 for r in rounds], color="#d95f02")
    axes[1].set(title="correction effort: share of pixels changed", xlabel="round", ylabel="share")
    for ax in axes:
        ax.set_xticks(xs)
    return _png(fig)


def _class_plot(rounds: list[RoundSummary]) -> str | None:
    with_classes = [r for r in rounds if r.per_class_iou]
    if not with_classes:
        return None
    names = sorted({n for r in with_classes for n in r.per_class_iou})
    width = 0.8 / len(with_classes)
    fig, ax = plt.subplots(figsize=(max(5, len(names) * 1.4), 3.2))
    for i, r in enumerate(with_classes):
        xs = np.arange(len(names)) + i * width
        ax.bar(
            xs,
            [r.per_class_iou.get(n, 0) for n in names],
            width,
            label=f"v{r.model_version or '?'} (round {r.round})",
        )
    ax.set_xticks(np.arange(len(names)) + width * (len(with_classes) - 1) / 2, names)
    ax.set(ylim=(0, 1), ylabel="IoU", title="per-class IoU per model version")
    ax.legend(fontsize=8)
    return _png(fig)


def render_loop_report(
    rounds: list[RoundSummary], samples: list[Sample], labels: LabelSet, title: str
) -> str:
    palette = labels.palette()
    rows = []
    for r in rounds:
        cells = [
            r.round,
            "-" if r.images_refined is None else r.images_refined,
            _fmt(r.correction_iou),
            _fmt(r.changed_share),
            _fmt(r.test_miou),
            r.model_version or "-",
            r.alias or "-",
        ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    sample_rows = []
    for s in samples:
        image = load_rgb(s.image_uri)
        pre, refined = load_mask(s.pre_mask_uri), load_mask(s.refined_mask_uri)
        if pre.shape != image.shape[:2] or refined.shape != image.shape[:2]:
            continue
        changed = float((pre != refined).mean())
        sample_rows.append(
            f"<tr><td>{html.escape(s.record_id)}<br>changed {changed:.1%}</td>"
            f"<td><img class='sample' src='data:image/png;base64,{_array_png(overlay(image, pre, palette))}'></td>"
            f"<td><img class='sample' src='data:image/png;base64,{_array_png(overlay(image, refined, palette))}'></td></tr>"
        )
    class_plot = _class_plot(rounds)
    legend = " ".join(
        f"<span style='background:{lab.color};padding:0 8px;margin-right:4px'></span>{html.escape(lab.name)}"
        for lab in labels.labels[1:]
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:24px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}} img{{max-width:320px}}
img.sample{{width:256px;image-rendering:pixelated}}</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Rounds</h2>
<table><tr><th>round</th><th>images refined</th><th>pre-annotation IoU vs refined</th><th>pixels changed</th>
<th>test mean IoU</th><th>model version</th><th>alias</th></tr>{"".join(rows)}</table>
<p><img style="max-width:900px" src="data:image/png;base64,{_round_plots(rounds)}"></p>
{f'<p><img style="max-width:900px" src="data:image/png;base64,{class_plot}"></p>' if class_plot else ""}
<h2>Pre-annotation and refined mask</h2><p>{legend}</p>
<table><tr><th>image</th><th>pre-annotation (model)</th><th>refined (people)</th></tr>{"".join(sample_rows)}</table>
</body></html>"""


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_loop_report(
    uri: str | Path, rounds, samples, labels, title="segloop active-learning loop"
) -> str:
    storage.write_text(str(uri), render_loop_report(rounds, samples, labels, title))
    return str(uri)
