"""The component image names: one CPU image and one CUDA image (for infer and train).

`@dsl.component(base_image=...)` needs a name at import time, so the defaults come from the
environment (`SEGLOOP_IMAGE_REGISTRY`, `SEGLOOP_IMAGE_TAG`, or full names in `SEGLOOP_CPU_IMAGE`
/ `SEGLOOP_CUDA_IMAGE`); at compile time `platform.py` sets each task's image from the config's
`kfp.images` section, which wins.
"""

from __future__ import annotations

import os

from components.core.version import segloop_version

DEFAULT_REGISTRY = "ghcr.io/segloop"
CPU_NAME = "segloop"
CUDA_NAME = "segloop-cuda"


def _name(registry: str, name: str, tag: str) -> str:
    return f"{registry.rstrip('/')}/{name}:{tag}"


def cpu_image() -> str:
    """The CPU image every stage but infer and train runs in."""
    return os.environ.get("SEGLOOP_CPU_IMAGE") or _name(
        os.environ.get("SEGLOOP_IMAGE_REGISTRY", DEFAULT_REGISTRY),
        CPU_NAME,
        os.environ.get("SEGLOOP_IMAGE_TAG", segloop_version()),
    )


def cuda_image() -> str:
    """The CUDA image (PyTorch CUDA base) that infer and train run in."""
    return os.environ.get("SEGLOOP_CUDA_IMAGE") or _name(
        os.environ.get("SEGLOOP_IMAGE_REGISTRY", DEFAULT_REGISTRY),
        CUDA_NAME,
        os.environ.get("SEGLOOP_IMAGE_TAG", segloop_version()),
    )


def images_from_config(images) -> tuple[str, str]:
    """(cpu, cuda) image names from a `kfp.images` config section."""
    cpu = images.cpu or _name(images.registry, CPU_NAME, images.tag)
    cuda = images.cuda or _name(images.registry, CUDA_NAME, images.tag)
    return cpu, cuda


def pull_policy(image: str) -> str:
    """`IfNotPresent` for a reference by digest (it names one image for ever); `Always` for a
    tag, which a push can move: a node that cached the old image would run it."""
    return "IfNotPresent" if "@sha256:" in image else "Always"
