"""The component image names: one CPU image and one CUDA image (for infer and train).

`@dsl.component(base_image=...)` needs a name at import time, so the defaults come from the
environment (`SEGLOOP_IMAGE_REGISTRY`, `SEGLOOP_IMAGE_TAG`, or full names in `SEGLOOP_CPU_IMAGE`
/ `SEGLOOP_CUDA_IMAGE`); at compile time `platform.py` sets each task's image from the config's
`kfp.images` section, which wins.

The default tag is one per build: segloop's version and a hash of the code the image installs
(`build_tag`), so a tag never names two different images and a node that cached one runs the
code it was compiled with. `make images` and `segloop deploy` tag what they build with it;
`python -m components.images tag` prints it.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from functools import lru_cache
from pathlib import Path

from components.core.version import segloop_version

DEFAULT_REGISTRY = "ghcr.io/segloop"
CPU_NAME = "segloop"
CUDA_NAME = "segloop-cuda"
# The packages the image installs (images/segloop.Dockerfile copies them and pip installs them),
# found next to this one: the same files in a source tree and in an installed segloop.
PACKAGES = ("components", "pipelines")
# Left out of the images (.dockerignore): the demo scaffolding, which no stage needs.
NOT_IN_IMAGES = ("pipelines/demo",)


def _code_files(root: Path) -> list[Path]:
    files = []
    for package in PACKAGES:
        for path in (root / package).rglob("*"):
            relative = path.relative_to(root).as_posix()
            if relative.startswith(tuple(f"{p}/" for p in NOT_IN_IMAGES)):
                continue
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def code_hash(root: Path) -> str:
    """SHA-256 over the path and bytes of every file of the packages under `root`."""
    digest = hashlib.sha256()
    for path in _code_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


@lru_cache
def build_tag() -> str:
    """`<version>-<12 hex digits>`: segloop's version and the hash of the code the image
    installs (this segloop's own packages)."""
    version = re.sub(r"[^A-Za-z0-9_.-]", "_", segloop_version())  # a tag's characters only
    return f"{version}-{code_hash(Path(__file__).resolve().parent.parent)[:12]}"


def _name(registry: str, name: str, tag: str) -> str:
    return f"{registry.rstrip('/')}/{name}:{tag}"


def cpu_image() -> str:
    """The CPU image every stage but infer and train runs in."""
    return os.environ.get("SEGLOOP_CPU_IMAGE") or _name(
        os.environ.get("SEGLOOP_IMAGE_REGISTRY", DEFAULT_REGISTRY),
        CPU_NAME,
        os.environ.get("SEGLOOP_IMAGE_TAG") or build_tag(),
    )


def cuda_image() -> str:
    """The CUDA image (PyTorch CUDA base) that infer and train run in."""
    return os.environ.get("SEGLOOP_CUDA_IMAGE") or _name(
        os.environ.get("SEGLOOP_IMAGE_REGISTRY", DEFAULT_REGISTRY),
        CUDA_NAME,
        os.environ.get("SEGLOOP_IMAGE_TAG") or build_tag(),
    )


def images_from_config(images) -> tuple[str, str]:
    """(cpu, cuda) image names from a `kfp.images` config section."""
    cpu = images.cpu or _name(images.registry, CPU_NAME, images.tag)
    cuda = images.cuda or _name(images.registry, CUDA_NAME, images.tag)
    return cpu, cuda


def names_one_build(images) -> bool:
    """Whether the `kfp.images` section names images that cannot move: the per-build tag (no
    tag or name given) or references by digest."""
    given = images.model_fields_set & {"tag", "cpu", "cuda"}
    if not given or images.tag == build_tag() and not {"cpu", "cuda"} & given:
        return True
    return all("@sha256:" in image for image in images_from_config(images))


def pull_policy(images) -> str:
    """`IfNotPresent` for images that cannot move (per-build tag, digest); `Always` for a tag
    someone chose, which a push can move: a node that cached the old image would run it."""
    return images.pull_policy or ("IfNotPresent" if names_one_build(images) else "Always")


if __name__ == "__main__":  # `python -m components.images tag`: what `make images` tags with
    if sys.argv[1:] != ["tag"]:
        sys.exit("usage: python -m components.images tag")
    print(build_tag())
