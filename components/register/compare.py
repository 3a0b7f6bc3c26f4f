"""`run_compare`: registered model versions side by side (Markdown, CSV, HTML, and printed).

Columns: version, aliases, run, split hash, mean IoU, Dice, per-class IoU, and the mean IoU
delta against the first version listed (the baseline, the oldest when versions are chosen by
--last). Versions evaluated on different test splits are flagged: their scores are not
comparable. The Markdown and the HTML (`templates/compare.html`) say what each column is.
"""

from __future__ import annotations

import csv
import io
import logging
from typing import Any

import jinja2

from components.core import storage, tracking
from components.core.errors import SegloopError
from components.core.tracking import TAG
from components.register.settings import RegisterConfig

log = logging.getLogger(__name__)
TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("components.register", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _versions(client, name: str, versions, aliases, last) -> list:
    from mlflow.exceptions import MlflowException

    try:
        if versions:
            return [client.get_model_version(name, str(v)) for v in versions]
        if aliases:
            return [client.get_model_version_by_alias(name, a) for a in aliases]
        found = client.search_model_versions(f"name = '{name}'")
        found = sorted(found, key=lambda mv: int(mv.version), reverse=True)[: last or 5]
        return sorted(found, key=lambda mv: int(mv.version))
    except MlflowException as exc:
        raise SegloopError(
            f"cannot read versions of registered model {name!r}: {exc.message}; list them with "
            f"`segloop compare --model {name} --last 5`"
        ) from exc


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def aliases_by_version(client, name: str) -> dict[str, list[str]]:
    """version -> aliases, from the registered model: versions found by search carry no aliases
    (MLflow 3.x), so the model's own alias table is the one to trust."""
    out: dict[str, list[str]] = {}
    for alias, version in (client.get_registered_model(name).aliases or {}).items():
        out.setdefault(str(version), []).append(alias)
    return out


def compare_rows(
    mvs: list, aliases: dict[str, list[str]] | None = None
) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    classes: list[str] = []
    for mv in mvs:
        for key in mv.tags:
            if key.startswith(f"{TAG}iou.") and key[len(TAG) + 4 :] not in classes:
                classes.append(key[len(TAG) + 4 :])
    base = _num(mvs[0].tags.get(f"{TAG}mean_iou")) if mvs else None
    rows = []
    for mv in mvs:
        miou = _num(mv.tags.get(f"{TAG}mean_iou"))
        row: dict[str, Any] = {
            "version": int(mv.version),
            "aliases": ",".join(
                sorted((aliases or {}).get(str(mv.version)) or getattr(mv, "aliases", []) or [])
            ),
            "run": (mv.run_id or "")[:12],
            "split_hash": mv.tags.get(f"{TAG}split_hash", "")[:12],
            "mean_iou": miou,
            "delta_mean_iou": None if miou is None or base is None else miou - base,
            "mean_dice": _num(mv.tags.get(f"{TAG}mean_dice")),
        }
        for cls in classes:
            row[f"iou_{cls}"] = _num(mv.tags.get(f"{TAG}iou.{cls}"))
        rows.append(row)
    columns = list(rows[0]) if rows else []
    splits = {mv.tags.get(f"{TAG}split_hash", "") for mv in mvs}
    warnings = []
    if len(splits) > 1:
        warnings.append(
            "versions were evaluated on different test splits "
            f"({', '.join(sorted(h[:12] or '?' for h in splits))}): their scores are not "
            "comparable; re-evaluate them on one split"
        )
    return columns, rows, warnings


def _fmt(value: Any, column: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:+.4f}" if column.startswith("delta") else f"{value:.4f}"
    return str(value)


def column_notes(columns: list[str], rows: list[dict[str, Any]]) -> dict[str, str]:
    """What each column is; the delta names the version it is measured against."""
    base = rows[0]["version"] if rows else "?"
    notes = {
        "version": "MLflow model version",
        "aliases": "aliases the version holds now (champion, challenger)",
        "run": "MLflow run that logged the model (first 12 characters)",
        "split_hash": "hash of the test split it was evaluated on; equal hashes are comparable",
        "mean_iou": "mean IoU over the classes on the test split",
        "delta_mean_iou": f"mean IoU minus that of version {base}, the first version listed "
        "(the baseline; not necessarily the champion)",
        "mean_dice": "mean Dice over the classes on the test split",
    }
    for c in columns:
        if c.startswith("iou_"):
            notes[c] = f"IoU of class {c[4:]} on the test split"
    return {c: notes[c] for c in columns if c in notes}


def headers(columns: list[str], rows: list[dict[str, Any]]) -> dict[str, str]:
    """Column headers for people: the delta column says what it is measured against."""
    base = rows[0]["version"] if rows else "?"
    return {c: f"delta_mean_iou (vs v{base})" if c == "delta_mean_iou" else c for c in columns}


def to_markdown(columns, rows, warnings) -> str:
    head = headers(columns, rows)
    lines = ["| " + " | ".join(head[c] for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r[c], c) for c in columns) + " |" for r in rows]
    if "delta_mean_iou" in columns:
        lines += ["", f"delta_mean_iou: {column_notes(columns, rows)['delta_mean_iou']}."]
    lines += [f"\n> warning: {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def to_csv(columns, rows) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_html(name, columns, rows, warnings) -> str:
    return TEMPLATES.get_template("compare.html").render(
        name=name,
        columns=columns,
        headers=headers(columns, rows),
        notes=column_notes(columns, rows),
        cells=[[_fmt(r[c], c) for c in columns] for r in rows],
        baseline=rows[0]["version"] if rows else None,
        warnings=warnings,
    )


def run_compare(
    cfg: RegisterConfig,
    *,
    out: str,
    model: str | None = None,
    versions: list[int] | None = None,
    aliases: list[str] | None = None,
    last: int | None = None,
) -> dict[str, Any]:
    if sum(bool(x) for x in (versions, aliases, last)) > 1:
        raise SegloopError("choose one of --versions, --aliases or --last")
    name = model or tracking.registered_model_name(cfg)
    client = tracking.client(cfg)  # the configured server, checked to answer
    mvs = _versions(client, name, versions, aliases, last)
    if not mvs:
        raise SegloopError(f"registered model {name!r} has no versions yet; run `segloop register`")
    columns, rows, warnings = compare_rows(mvs, aliases_by_version(client, name))
    for w in warnings:
        log.warning("compare: %s", w)
    md = to_markdown(columns, rows, warnings)
    storage.write_text(storage.join(out, "compare.md"), f"# {name}\n\n{md}")
    storage.write_text(storage.join(out, "compare.csv"), to_csv(columns, rows))
    storage.write_text(storage.join(out, "compare.html"), to_html(name, columns, rows, warnings))
    return {"name": name, "columns": columns, "rows": rows, "warnings": warnings, "markdown": md}
