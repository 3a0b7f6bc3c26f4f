"""The evaluation report: pictures (matplotlib, PNG) and the same content as Markdown and HTML.

Masks are drawn in the report colours of `components.core.labels` (not the labels' own colours,
which may look like the plants), filled and outlined, next to each other: image, ground truth,
prediction, errors. The HTML comes from `templates/report.html` (Jinja2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from components.core.images import load_mask, load_rgb  # noqa: E402
from components.core.labels import LabelSet, mark_pixels, paint_overlay, shrink  # noqa: E402

TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("components.evaluate", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
PANEL_SIDE = 512  # images are drawn at most this large (outlines stay visible)
BEST_CAPTION = (
    "The test images with plants (foreground in the ground truth) that the model gets most "
    "right. Images of bare soil are left out: predicting no plant on them scores a mean IoU "
    "of 1.000 and shows nothing."
)
WORST_CAPTION = "The test images with the lowest mean IoU."


def has_plants(row: dict[str, Any]) -> bool:
    """Whether the ground truth of an evaluated image has any foreground (class > 0)."""
    if "foreground" in row:
        return bool(row["foreground"])
    truth = load_mask(row["mask"])
    return bool(((truth > 0) & (truth != 255)).any())


def pick_images(
    per_image: list[dict[str, Any]], k: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(best, worst) rows for the image grids: best are the `k` images with plants that score
    highest (bare-soil images only when no test image has plants), worst the `k` lowest.
    Masks are read lazily, down the ranking, until `k` images with plants are found."""
    ranked = sorted(per_image, key=lambda r: (-r["mean_iou"], r["record_id"]))
    best: list[dict[str, Any]] = []
    for row in ranked:
        if len(best) == k:
            break
        if has_plants(row):
            best.append(row)
    if not best:
        best = ranked[:k]
    worst = sorted(per_image, key=lambda r: (r["mean_iou"], r["record_id"]))[:k]
    return best, worst


def iou_bars(result: dict[str, Any], path: Path) -> None:
    names = list(result["iou"])
    values = [v if v is not None else 0.0 for v in result["iou"].values()]
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 2), 3.2))
    bars = ax.bar(names, values, color="#4c78a8")
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.axhline(result["mean_iou"], color="#e45756", linestyle="--", label="mean IoU")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("IoU")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Per-class IoU (test, full resolution)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_plot(cm: np.ndarray, names: list[str], path: Path) -> None:
    """Row-normalized (recall per true class), with raw pixel counts in the cells."""
    cm = np.asarray(cm, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(3.5, 0.7 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            color = "white" if norm[i, j] > 0.5 else "black"
            ax.text(j, i, f"{norm[i, j]:.2f}\n{int(cm[i, j])}", ha="center", va="center",
                    fontsize=7, color=color)  # fmt: skip
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (row-normalized)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _legend_handles(labels: LabelSet) -> list[Patch]:
    handles = [Patch(facecolor=c, edgecolor="#333", label=n) for n, c in labels.legend()]
    return handles + [Patch(facecolor="#ff00ff", edgecolor="#333", label="error")]


def image_grid(rows: list[dict[str, Any]], labels: LabelSet, path: Path, title: str) -> None:
    """One row per image: image, truth overlay, prediction overlay, errors; a colour legend."""
    palette = labels.overlay_palette()
    fig, axes = plt.subplots(
        len(rows), 4, figsize=(12, 3 * len(rows) + 0.6), squeeze=False, layout="constrained"
    )
    for r, row in enumerate(rows):
        image, (truth, pred) = shrink(
            load_rgb(row["image"]), [load_mask(row["mask"]), load_mask(row["prediction"])],
            PANEL_SIDE,
        )  # fmt: skip
        plants = bool(((truth > 0) & (truth != 255)).any())
        wrong = (truth != pred) & (truth != 255)
        panels = [
            (image, f"{row['record_id']}" + ("" if plants else " (bare soil)")),
            (paint_overlay(image, truth, palette), "ground truth"),
            (paint_overlay(image, pred, palette), f"prediction (mIoU {row['mean_iou']:.3f})"),
            (mark_pixels(image, wrong), f"errors: {wrong.mean():.1%} of pixels"),
        ]
        for c, (img, name) in enumerate(panels):
            axes[r, c].imshow(img, interpolation="nearest")
            axes[r, c].set_title(name, fontsize=9)
            axes[r, c].axis("off")
    fig.suptitle(title)
    handles = _legend_handles(labels)
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def legend_png(labels: LabelSet, path: Path) -> None:
    """The report colours as a picture (class name -> colour; background is not coloured)."""
    handles = _legend_handles(labels)
    fig = plt.figure(figsize=(max(3, 1.4 * len(handles)), 0.6))
    fig.legend(handles=handles, loc="center", ncol=len(handles), fontsize=9, frameon=False)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _legend(names: list[str]) -> list[tuple[str, str]]:
    return LabelSet.model_validate(
        {"labels": [{"name": n, "id": i} for i, n in enumerate(names)]}
    ).legend()


def write_reports(folder: Path, summary: dict[str, Any], names: list[str]) -> None:
    """report.md and report.html next to figures/ (relative links)."""
    result = summary["scores"]
    header = ["class", "IoU", "Dice", "precision", "recall"]
    rows = [
        [n, _fmt(result["iou"][n]), _fmt(result["dice"][n]), _fmt(result["precision"][n]),
         _fmt(result["recall"][n])]
        for n in names
    ]  # fmt: skip
    facts = [
        ("model", summary["model"]),
        ("test images", str(summary["images"])),
        ("split hash", summary["split_hash"]),
        ("mean IoU", f"{result['mean_iou']:.4f}"),
        ("mean Dice", f"{result['mean_dice']:.4f}"),
        ("pixel accuracy", f"{result['pixel_accuracy']:.4f}"),
    ]
    legend = _legend(names)
    figures = [
        ("Per-class IoU", "figures/iou_bars.png", ""),
        ("Confusion matrix", "figures/confusion.png", ""),
        ("Best images", "figures/best.png", BEST_CAPTION),
        ("Worst images", "figures/worst.png", WORST_CAPTION),
    ]
    md = ["# Evaluation report", ""]
    md += [f"- **{k}**: `{v}`" for k, v in facts]
    md += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", "## Colours", "", "Masks are filled and outlined in these colours; background "
           "is not coloured; errors are magenta.", ""]  # fmt: skip
    md += [f"- {name}: `{color}`" for name, color in legend]
    md += ["", "![colours](figures/legend.png)"]
    for title, src, caption in figures:
        md += ["", f"## {title}", ""] + ([caption, ""] if caption else []) + [f"![{title}]({src})"]
    (folder / "report.md").write_text("\n".join(md) + "\n")
    page = TEMPLATES.get_template("report.html").render(
        facts=facts, header=header, rows=rows, legend=legend, figures=figures
    )
    (folder / "report.html").write_text(page)
