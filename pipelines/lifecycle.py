"""The pipeline lifecycle in three steps: `init` (scaffold), `deploy` (images + pipeline
versions on Kubeflow) and `launch` (a cluster run from the run config used locally).

- `init_project(folder, template)` writes a project folder from `pipelines/templates/`: a run
  config (`run.yaml`), a README, a test that runs the config on two synthetic images, and for the
  `predictor` template a predictor module with a pyproject.toml that declares it as a
  `segloop.predictors` entry point. It also writes a few demo images and their image DB, so
  `segloop run pre_annotation --config FOLDER/run.yaml` runs as it is (the `exg` predictor or the
  scaffold's own one needs no model; annotation goes to the `folder` backend).
- `deploy(cfg, client, ...)` builds and pushes the component images where a Docker engine
  answers (and says so where none does), then compiles each pipeline and uploads it as a new
  pipeline version (`pipelines.submit.upload`).
- `launch(name, cfg, client, ...)` starts a run of the latest deployed version with the run
  config as its `config_json` parameter; with `upload=True` it is `segloop submit`.
"""

from __future__ import annotations

import logging
import re
import shutil
import string
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from components.core.errors import SegloopError
from components.core.storage import is_s3
from components.images import images_from_config, names_one_build
from pipelines.config import SegloopConfig
from pipelines.demo_scaffolding import demo_scaffolding
from pipelines.graphs import kfp_name
from pipelines.settings import PIPELINE_NAMES, TEMPLATES
from pipelines.submit import Submission

log = logging.getLogger(__name__)

PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# template -> [(template file, path in the scaffold)]; `{pkg}` is the Python name of the folder.
_COMMON = [("gitignore.tmpl", ".gitignore")]
FILES: dict[str, list[tuple[str, str]]] = {
    "pre_annotation": [
        ("run_pre_annotation.yaml.tmpl", "run.yaml"),
        ("README_pre_annotation.md.tmpl", "README.md"),
        ("test_pre_annotation.py.tmpl", "tests/test_{pkg}.py"),
        *_COMMON,
    ],
    "training": [
        ("run_training.yaml.tmpl", "run.yaml"),
        ("labels.yaml.tmpl", "labels.yaml"),
        ("README_training.md.tmpl", "README.md"),
        ("test_training.py.tmpl", "tests/test_{pkg}.py"),
        *_COMMON,
    ],
    "predictor": [
        ("run_predictor.yaml.tmpl", "run.yaml"),
        ("predictor.py.tmpl", "{pkg}.py"),
        ("pyproject.toml.tmpl", "pyproject.toml"),
        ("README_predictor.md.tmpl", "README.md"),
        ("test_predictor.py.tmpl", "tests/test_{pkg}.py"),
        *_COMMON,
    ],
}


# ---------------------------------------------------------------- init


@dataclass
class Scaffold:
    folder: Path
    template: str
    files: list[Path] = field(default_factory=list)
    demo_images: int = 0

    def summary(self) -> str:
        lines = [f"created {self.folder} (template {self.template}):"]
        lines += [f"  {p.relative_to(self.folder)}" for p in self.files]
        if self.demo_images:
            lines.append(f"  data/ ({self.demo_images} demo images and their image DB)")
        lines += [
            "next:",
            f"  segloop run pre_annotation --config {self.folder}/run.yaml",
            f"  pytest {self.folder}/tests",
        ]
        return "\n".join(lines)


def python_name(name: str) -> str:
    """A module name from a folder name: `weeds-2025` -> `weeds_2025`."""
    pkg = re.sub(r"\W+", "_", name).strip("_").lower() or "project"
    return f"p_{pkg}" if pkg[0].isdigit() else pkg


def _render(template: str, context: dict[str, str]) -> str:
    text = resources.files("pipelines.templates").joinpath(template).read_text(encoding="utf-8")
    try:
        return string.Template(text).substitute(context)
    except (KeyError, ValueError) as exc:  # a template bug, not a user error
        raise RuntimeError(f"template {template} has a bad placeholder: {exc}") from exc


def init_project(
    folder: str | Path,
    template: str,
    *,
    demo_images: int = 4,
    force: bool = False,
) -> Scaffold:
    """Scaffold `folder` from `template`; paths in run.yaml are relative to the current folder."""
    if template not in TEMPLATES:
        raise SegloopError(f"unknown template {template!r}; choose one of: {', '.join(TEMPLATES)}")
    # Before any file is written: the component images have no demo data to write.
    synthetic = demo_scaffolding("synthetic") if demo_images else None
    folder = Path(folder)
    name = folder.resolve().name
    if not PROJECT_NAME.match(name):
        raise SegloopError(
            f"project folder name {name!r} must start with a letter or digit and hold only "
            "letters, digits, '_', '.' and '-' (it becomes project.name)"
        )
    if folder.exists() and any(folder.iterdir()) and not force:
        raise SegloopError(
            f"{folder} exists and is not empty; choose a new folder or pass --force to write "
            "the scaffold's files into it (files of the same name are replaced)"
        )
    # Paths inside run.yaml: as the user wrote the folder (relative to where they run segloop).
    where = folder.as_posix().rstrip("/") or "."
    context = {
        "name": name,
        "project": name,
        "pkg": python_name(name),
        "pkg_class": "".join(p.capitalize() for p in python_name(name).split("_")) + "Predictor",
        "dist": python_name(name).replace("_", "-"),
        "folder": where,
        "template": template,
    }
    scaffold = Scaffold(folder, template)
    for source, target in FILES[template]:
        path = folder / target.format(pkg=context["pkg"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_render(source, context), encoding="utf-8")
        scaffold.files.append(path)
    if demo_images:
        synthetic.make_dataset(
            folder / "data",
            demo_images,
            seed=0,
            db_url=f"sqlite:///{where}/data/images.db",
            size=(128, 128),
        )
        scaffold.demo_images = demo_images
    return scaffold


# ---------------------------------------------------------------- deploy


@dataclass
class Deployment:
    images: list[str]
    images_built: bool
    images_note: str
    pipelines: list[dict[str, str]] = field(default_factory=list)  # name, id, version id/name


def _docker_problem() -> str | None:
    from pipelines.local import docker_engine_error

    if shutil.which("docker") is None:
        return "the docker command is not installed"
    return docker_engine_error()


def build_and_push(
    images: list[tuple[str, str, dict[str, str]]], context: Path, push: bool = True
) -> None:
    """`docker build` (and `docker push`) each (Dockerfile, image name, build args) from
    `context`."""
    for dockerfile, image, build_args in images:
        path = context / dockerfile
        if not path.is_file():
            raise SegloopError(
                f"{path} does not exist: run deploy from the segloop source tree (or pass "
                "--context DIR), where images/*.Dockerfile are"
            )
        args = [
            f"--target={value}" if key == "target" else f"--build-arg={key}={value}"
            for key, value in build_args.items()
        ]
        steps = [["docker", "build", "-f", str(path), *args, "-t", image, str(context)]]
        if push:
            steps.append(["docker", "push", image])
        for cmd in steps:
            log.info("running: %s", " ".join(cmd))
            done = subprocess.run(cmd, check=False)
            if done.returncode != 0:
                raise SegloopError(
                    f"`{' '.join(cmd)}` failed with exit status {done.returncode}; its output "
                    "is above (is the registry login done? `docker login REGISTRY`)"
                )


def in_registry(image: str) -> bool:
    """Whether the registry already holds `image` (`docker manifest inspect` answers 0)."""
    done = subprocess.run(
        ["docker", "manifest", "inspect", image], capture_output=True, check=False, timeout=120
    )
    return done.returncode == 0


def images_to_build(cfg: SegloopConfig) -> list[str]:
    """The images deploy must build and push: none that the registry holds already. A per-build
    tag there is this very code (skipped); a tag someone chose is refused, since pushing it
    again would move it under the nodes that cached the old image."""
    wanted = list(images_from_config(cfg.kfp.images))
    present = [image for image in wanted if in_registry(image)]
    if present and not names_one_build(cfg.kfp.images):
        raise SegloopError(
            f"{', '.join(present)} already in the registry: pushing the same tag again would "
            "leave nodes that cached the old image running it; leave kfp.images.tag unset (a "
            "tag per build) or choose a new tag"
        )
    for image in present:
        log.info("%s is in the registry already (same code): not built again", image)
    return [image for image in wanted if image not in present]


def deploy(
    cfg: SegloopConfig,
    client: Any,
    *,
    host: str,
    namespace: str | None = None,
    pipelines: list[str] | tuple[str, ...] = PIPELINE_NAMES,
    build_images: bool = True,
    require_images: bool = False,
    push: bool = True,
    context: str | Path = ".",
    docker_problem: Callable[[], str | None] = _docker_problem,
) -> Deployment:
    """Images (where Docker answers), then each pipeline as a new version on Kubeflow."""
    from pipelines.compile import check_no_credentials
    from pipelines.submit import check_backend, upload

    check_no_credentials(cfg)  # before images are built and pushed
    check_backend(client, host, cfg)  # a backend that cannot run the pipelines: nothing pushed
    unknown = [p for p in pipelines if p not in PIPELINE_NAMES]
    if unknown:
        raise SegloopError(f"unknown pipelines {unknown}; choose from {', '.join(PIPELINE_NAMES)}")
    cpu, cuda = images_from_config(cfg.kfp.images)
    names = [cpu, cuda]
    if not build_images:
        built, note = False, "image build skipped (--skip-images): the cluster pulls them as named"
    else:
        problem = docker_problem()
        if problem:
            note = (
                f"images not built: {problem}. The cluster pulls {cpu} and {cuda} as they are; "
                "build and push them where Docker runs (`make push REGISTRY=... TAG=...`)"
            )
            if require_images:
                raise SegloopError(f"--require-images: {note}")
            built = False
        else:
            recipes = [
                ("images/segloop.Dockerfile", cpu, {"target": "cpu"}),
                # PyPI's torch wheels carry the CUDA libraries (see the Dockerfile).
                ("images/segloop.Dockerfile", cuda, {"target": "cuda", "TORCH_INDEX_URL": ""}),
            ]
            missing = images_to_build(cfg) if push else [cpu, cuda]
            build_and_push([r for r in recipes if r[1] in missing], Path(context), push=push)
            built = True
            parts = (
                [f"built{' and pushed' if push else ''}: {', '.join(missing)}"] if missing else []
            )
            kept = [image for image in names if image not in missing]
            if kept:
                parts.append(f"in the registry already: {', '.join(kept)}")
            note = "images " + "; ".join(parts)
    log.info(note)
    result = Deployment(names, built, note)
    for name in pipelines:
        pipeline_id, version_id, version_name = upload(client, name, cfg, namespace, host)
        result.pipelines.append(
            {
                "pipeline": name,
                "kfp_name": kfp_name(cfg, name),
                "pipeline_id": pipeline_id,
                "version_id": version_id,
                "version_name": version_name,
            }
        )
    return result


# ---------------------------------------------------------------- launch


def local_only_settings(cfg: SegloopConfig) -> list[str]:
    """Settings that point at this machine's files, which a cluster's pods cannot see."""
    found = []
    if not is_s3(cfg.io.out_root):
        found.append(f"io.out_root={cfg.io.out_root}")
    if cfg.db.url.startswith("sqlite"):
        found.append(f"db.url={cfg.db.url}")
    if cfg.cvat.backend == "folder" and cfg.cvat.folder and not is_s3(cfg.cvat.folder):
        found.append(f"cvat.folder={cfg.cvat.folder}")
    if cfg.project.labels and not is_s3(cfg.project.labels):
        found.append(f"project.labels={cfg.project.labels}")
    predictor = cfg.infer.predictor
    if predictor.partition(":")[0].endswith(".py"):
        found.append(f"infer.predictor={predictor}")
    if _local_tracking_uri(cfg.mlflow.tracking_uri):
        # It wins over the Secret's MLFLOW_TRACKING_URI in the pods, which would then resolve
        # models:/ URIs (the champion) on a server or file they cannot reach.
        found.append(f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}")
    return found


def _local_tracking_uri(uri: str | None) -> bool:
    """A tracking URI that only this machine can use: a file, SQLite, or a loopback host."""
    if not uri:
        return False
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        host = (parsed.hostname or "").lower()
        return host == "localhost" or host.startswith("127.") or host in ("::1", "0.0.0.0")
    return parsed.scheme in ("", "file", "sqlite")


def deployed_kfp(pipeline: Any, version: Any) -> dict[str, Any] | None:
    """The compile-time `kfp` settings `upload` recorded for `version` of `pipeline`: in the
    version's description, or for the first version (created with the pipeline and named after
    it) in the pipeline's. None when neither holds them (uploaded otherwise or by an older
    segloop, or a server that keeps no version descriptions)."""
    from pipelines.compile import read_fingerprint

    found = read_fingerprint(getattr(version, "description", None))
    if found is None and version.display_name == pipeline.display_name:
        found = read_fingerprint(getattr(pipeline, "description", None))
    return found


def check_compiled_kfp(cfg: SegloopConfig, pipeline: Any, version: Any) -> None:
    """Refuse to launch `version` with a config whose compile-time `kfp` settings differ from
    the ones it was compiled with: the run would silently use the deployed ones."""
    from pipelines.compile import kfp_differences

    compiled = deployed_kfp(pipeline, version)
    if compiled is None:
        log.warning(
            "the deployed version %s records no compile-time kfp settings: cannot check that "
            "this config's kfp section (images, GPU placement, resources, Secrets, caching, "
            "retries) is the one it was compiled with",
            version.display_name,
        )
        return
    differences = kfp_differences(compiled, cfg)
    if differences:
        raise SegloopError(
            f"the deployed version {version.display_name} was compiled with other kfp settings "
            "than this config's; they are compiled into the pipeline, so a run cannot change "
            "them:\n"
            + "\n".join(f"- {d}" for d in differences)
            + "\nDeploy this config first (`segloop deploy`), or compile and upload it with the "
            "run (`segloop launch --upload`). Run-time settings (every section but kfp) are "
            "read from config_json by the run and need neither."
        )


@dataclass
class Launch(Submission):
    uploaded: bool = False
    warnings: list[str] = field(default_factory=list)


def launch(
    name: str,
    cfg: SegloopConfig,
    client: Any,
    *,
    host: str,
    namespace: str | None = None,
    upload: bool = False,
    **run: Any,
) -> Launch:
    """Run the latest deployed version of pipeline `name` with `cfg` as its config_json.

    `upload=True` compiles and uploads a new version first, as `segloop submit`. `run`: the
    run's keyword arguments of `pipelines.submit.submit` (experiment, run_name, params,
    service_account).
    """
    from pipelines.compile import check_no_credentials
    from pipelines.submit import api_call, check_backend, latest_version, pipeline_named, submit

    check_no_credentials(cfg, run.get("params"))
    check_backend(client, host, cfg)  # before the deployed version is looked up
    warnings = local_only_settings(cfg)
    for w in warnings:
        log.warning("%s is a local path: the cluster's pods cannot read it", w)
    version = None
    if not upload:
        pipeline_name = kfp_name(cfg, name)
        pipeline = api_call(
            "finding the pipeline", host, pipeline_named, client, pipeline_name, namespace
        )
        if pipeline is None:
            raise SegloopError(
                f"pipeline {pipeline_name} is not deployed at {host}; run `segloop deploy` "
                "first, or pass --upload to compile and upload it now"
            )
        pipeline_id = pipeline.pipeline_id
        latest = api_call("reading its latest version", host, latest_version, client, pipeline_id)
        check_compiled_kfp(cfg, pipeline, latest)
        version = (pipeline_id, latest.pipeline_version_id, latest.display_name)
    result = submit(
        name,
        cfg,
        client,
        host=host,
        namespace=namespace,
        version=version,
        **run,
    )
    return Launch(**vars(result), uploaded=version is None, warnings=warnings)
