"""The layers run one way: pipelines/ -> components/<stage>/ -> components/core/.

Checked twice: what importing a module really loads (a fresh interpreter's sys.modules), and
what every source file imports (its syntax tree, imports inside functions included).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from paths import REPO_ROOT  # tests/ is on sys.path

STAGES = {
    p.name
    for p in (REPO_ROOT / "components").iterdir()
    if p.is_dir() and p.name not in ("core", "__pycache__") and (p / "__init__.py").exists()
}


def loaded_by(module: str) -> list[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def segloop_modules(names: list[str]) -> list[str]:
    return [n for n in names if n.split(".")[0] in ("components", "pipelines")]


@pytest.mark.parametrize(
    "module", ["components.core.config", "components.core.tracking", "components.core.predictor"]
)
def test_core_loads_no_stage_and_no_pipeline(module):
    loaded = segloop_modules(loaded_by(module))
    outside = [n for n in loaded if not n.startswith("components.core") and n != "components"]
    assert not outside, f"importing {module} loads {outside}"


def test_a_component_loads_no_pipeline_code():
    loaded = segloop_modules(loaded_by("components.train.component"))
    assert not [n for n in loaded if n.startswith("pipelines")]


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_source_file_imports_against_the_layers():
    wrong = []
    for path in sorted((REPO_ROOT / "components").rglob("*.py")):
        part = path.relative_to(REPO_ROOT / "components").parts
        here = part[0] if len(part) > 1 else None  # the stage folder, core, or top level
        for name in imports_of(path):
            top, _, rest = name.partition(".")
            if top == "pipelines":
                wrong.append(f"{path.relative_to(REPO_ROOT)} imports {name}")
            if top != "components" or not rest:
                continue
            target = rest.split(".")[0]
            if here == "core" and target != "core":
                wrong.append(f"{path.relative_to(REPO_ROOT)} (core) imports {name}")
            # A stage uses the core, its own modules and the shared predictors; the KFP wrapper
            # (component.py) also uses the wrapper helpers at the top of components/.
            if here in STAGES and target in STAGES - {here, "predictors"}:
                wrong.append(f"{path.relative_to(REPO_ROOT)} imports another stage: {name}")
            if (
                here in STAGES
                and path.name != "component.py"
                and target
                in (
                    "config",
                    "images",
                    "component_io",
                )
            ):
                wrong.append(
                    f"{path.relative_to(REPO_ROOT)} imports the root/wrapper module {name}"
                )
    assert not wrong, "\n".join(wrong)
