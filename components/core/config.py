"""The one config file every command, local pipeline run and cluster run share.

YAML (or TOML) on disk, merged with OmegaConf (file < CLI flags < `-o section.key=value`
overrides), validated by pydantic models so that an unknown key or a wrong type names the key,
the value and what is allowed. Credentials never live here: they come from the environment.
"""

from __future__ import annotations

import re
import tomllib
import warnings
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, Field, ValidationError

from components.core import storage
from components.core.errors import ConfigError
from components.core.settings_base import Section
from components.download_cvat.settings import DownloadCvatSettings
from components.evaluate.settings import EvaluateSettings
from components.infer.settings import InferSettings
from components.preprocess.settings import PreprocessSettings
from components.query.settings import QuerySettings
from components.register.settings import RegisterSettings
from components.select.settings import SelectSettings
from components.train.settings import TrainSettings
from components.upload_cvat.settings import CvatSettings, UploadCvatSettings
from pipelines.settings import KfpSettings

SECRET_WORDS = ("password", "secret", "token", "access_key", "credential")
URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@")


class ProjectSettings(Section):
    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    subname: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    labels: str | None = Field(None, description="labels file URI (name, id, color per class)")


class IOSettings(Section):
    out_root: str = Field("runs", description="root folder or s3:// prefix for run outputs")


class DBSettings(Section):
    url: str = Field("sqlite:///.segloop/images.db", description="SQLAlchemy URL of the image DB")
    table: str = "images"


class StackSettings(Section):
    """The embedded stack started by `segloop up` (127.0.0.1 only)."""

    dir: str = ".segloop"
    s3_port: int = Field(8333, ge=1, le=65535)
    mlflow_port: int = Field(5000, ge=1, le=65535)
    bucket: str = "segloop"
    start_timeout_s: float = Field(90, gt=0)


class MLflowSettings(Section):
    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI")
    experiment: str | None = Field(None, description="default: the project name")
    registered_model: str | None = Field(None, description="default: the project name")


# `register` (the stage) shadows ABCMeta.register on the class; instances read the field fine.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class SegloopConfig(Section):
    project: ProjectSettings = ProjectSettings()
    io: IOSettings = IOSettings()
    db: DBSettings = DBSettings()
    stack: StackSettings = StackSettings()
    mlflow: MLflowSettings = MLflowSettings()
    query: QuerySettings = QuerySettings()
    infer: InferSettings = InferSettings()
    preprocess: PreprocessSettings = PreprocessSettings()
    train: TrainSettings = TrainSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    register: RegisterSettings = RegisterSettings()
    select: SelectSettings = SelectSettings()
    cvat: CvatSettings = CvatSettings()
    upload_cvat: UploadCvatSettings = UploadCvatSettings()
    download_cvat: DownloadCvatSettings = DownloadCvatSettings()
    kfp: KfpSettings = KfpSettings()

    def to_yaml(self) -> str:
        return yaml.safe_dump(mask_secrets(self.model_dump(mode="json")), sort_keys=False)


def _read_file(path: str) -> dict[str, Any]:
    text = storage.read_text(path)
    try:
        if path.endswith(".toml"):
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid YAML/TOML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections, got {type(data).__name__}"
        )
    return data


def _parse_overrides(overrides: list[str]) -> Any:
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"override {item!r} is not of the form section.key=value (e.g. -o train.epochs=5)"
            )
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse overrides {overrides}: {exc}") from exc


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> SegloopConfig:
    """Load the config file (optional), apply `extra` (CLI flags) and `-o` overrides, validate."""
    layers = [OmegaConf.create(_read_file(str(path)) if path else {})]
    if extra:
        layers.append(OmegaConf.create(extra))
    layers.append(_parse_overrides(list(overrides)))
    try:
        merged = OmegaConf.to_container(OmegaConf.merge(*layers), resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot merge config {path or '(defaults)'}: {exc}") from exc
    try:
        return SegloopConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(exc, source=str(path) if path else None)
        ) from None


def config_from_json(text: str) -> SegloopConfig:
    """The config as KFP components receive it: one JSON string parameter."""
    try:
        return SegloopConfig.model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source="pipeline parameter")) from None


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return None
        model = field.annotation
    return model


def describe_validation_error(exc: ValidationError, source: str | None = None) -> str:
    """One line per problem: the dotted key, the value given and what is allowed."""
    where = f" in {source}" if source else ""
    lines = [f"invalid config{where}:"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            parent = _model_at(SegloopConfig, loc[:-1])
            allowed = ", ".join(parent.model_fields) if parent else "?"
            lines.append(f"  unknown key '{key}' (value {value!r}); allowed here: {allowed}")
        else:
            lines.append(f"  '{key}' = {value!r}: {err['msg']}")
    return "\n".join(lines)


def mask_secrets(data: Any) -> Any:
    """Replace the values of keys that look like credentials, recursively."""
    if isinstance(data, dict):
        return {
            k: "***" if any(w in str(k).lower() for w in SECRET_WORDS) and v else mask_secrets(v)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [mask_secrets(v) for v in data]
    if isinstance(data, str):
        # A password inside a URL (e.g. db.url=postgresql://user:pw@host/db) is a secret too.
        return URL_PASSWORD.sub(r"\1***@", data)
    return data


def stage_run_dir(cfg: SegloopConfig, stage: str) -> str:
    """`<out_root>/<project>/<subname>/<stage>`: where a CLI run of a stage writes by default."""
    return storage.join(cfg.io.out_root, cfg.project.name, cfg.project.subname, stage)


def save_resolved(cfg: SegloopConfig, run_dir: str | Path) -> str:
    """Write the resolved config (secrets masked) as cfg.yaml next to a run's outputs."""
    uri = storage.join(str(run_dir), "cfg.yaml")
    storage.write_text(uri, cfg.to_yaml())
    return uri
