"""What component bodies share, so that each stays one call to its stage's plain function:
the stage's metrics dict as a KFP `Metrics` artifact (nested keys dotted, booleans as 0/1, text
left out: the full dict is in the stage's own `metrics.json`), and reports as KFP `HTML`.
"""

from __future__ import annotations

import base64
import math
import mimetypes
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def scalar_metrics(result: Mapping[str, Any] | None, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (result or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(scalar_metrics(value, prefix=f"{name}."))
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, int | float) and math.isfinite(value):
            out[name] = float(value)
    return out


def log_metrics(artifact, result: Mapping[str, Any] | None) -> dict[str, float]:
    """Log a stage's numeric results on a KFP `Output[Metrics]`; returns what was logged."""
    scalars = scalar_metrics(result)
    for name, value in scalars.items():
        artifact.log_metric(name, value)
    return scalars


def self_contained_html(src: str | Path, dst: str | Path) -> Path:
    """Copy a stage's HTML report to a KFP `HTML` artifact file with its local pictures inlined
    (the KFP UI shows one file; `figures/x.png` next to it would not be found)."""
    src, dst = Path(src), Path(dst)
    html = src.read_text(encoding="utf-8")

    def inline(match: re.Match) -> str:
        ref = match.group(2)
        picture = (src.parent / ref).resolve()
        if "://" in ref or ref.startswith("data:") or not picture.is_file():
            return match.group(0)
        mime = mimetypes.guess_type(picture.name)[0] or "application/octet-stream"
        data = base64.b64encode(picture.read_bytes()).decode("ascii")
        return f'{match.group(1)}"data:{mime};base64,{data}"'

    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(re.sub(r'(src=)"([^"]+)"', inline, html), encoding="utf-8")
    return dst
