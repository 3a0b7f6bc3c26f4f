"""Config machinery and the sections every stage shares; the core knows no stage.

One config file serves every command, local pipeline run and cluster run: YAML (or TOML) on
disk, merged with OmegaConf (file < CLI flags < `-o section.key=value` overrides), validated by
pydantic models so that an unknown key or a wrong type names the key, the value and what is
allowed. Credentials never live here: they come from the environment.

OmegaConf is imported only when a layer needs it: most loads (no file, or one of plain values,
and overrides like `train.epochs=5` or `io.out_root=/data`) merge as plain dicts with the same
result (`_merge_plain`, checked against OmegaConf in tests/core/test_config.py); an interpolation
(`${...}`), a YAML-only override value (`1e3`, `[a, b]`, `'quoted'`), or anything else unusual
goes through OmegaConf. That keeps `segloop query` quick to start.

The sections are owned where they are used: the shared ones (project, io, db, stack, mlflow,
cvat) here as `SharedConfig`; each stage's own in `components/<stage>/settings.py`, as a
`<Stage>Config` that extends `SharedConfig` with it. The whole-config roots are composed above
the stages: `components.config.RunConfig` (what a component receives) and
`pipelines.config.SegloopConfig` (that plus the compile-time `kfp` section).
"""

from __future__ import annotations

import copy
import re
import reprlib
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.core.errors import ConfigError
from components.core.redact import is_secret_key  # noqa: F401
from components.core.redact import redact_data as mask_secrets
from components.core.settings_base import Section

# libyaml's emitter where PyYAML has it, several times faster: the text yaml.safe_dump writes
# (a long quoted string may fold at other spaces; it reads back the same).
SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


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


class CvatSettings(Section):
    """Where annotation happens (shared by upload and download). Credentials never live here:
    CVAT_USERNAME / CVAT_PASSWORD or CVAT_ACCESS_TOKEN come from the environment."""

    backend: Literal["cvat", "folder"] = Field(
        "cvat",
        description="cvat: a CVAT server; folder: a folder of task layouts edited in any tool",
    )
    folder: str | None = Field(None, description="folder backend: where the task folders live")
    host: str | None = Field(None, description="CVAT URL; default: $CVAT_HOST")
    organization: str | None = Field(None, description="organization slug; default: none")
    retries: int = Field(4, ge=0, description="retries on connection errors and 5xx answers")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles per retry")
    request_timeout_s: float = Field(
        120, gt=0, description="read timeout of one request (a hung server: retries x this)"
    )
    status_check_period_s: float = Field(
        1.0, gt=0, description="polling period of background requests"
    )
    verify_ssl: bool = True

    @model_validator(mode="after")
    def _check(self):
        if self.backend == "folder" and not self.folder:
            raise ValueError(
                "cvat.backend=folder needs cvat.folder (a folder path or s3:// prefix)"
            )
        return self


class SharedConfig(Section):
    """The sections every stage may read; a stage's `<Stage>Config` adds its own section."""

    # The composed roots (each stage's `<Stage>Config`, RunConfig, SegloopConfig) build their
    # validators when first used: a command builds the one root it validates, not a dozen.
    model_config = ConfigDict(defer_build=True)

    project: ProjectSettings = ProjectSettings()
    io: IOSettings = IOSettings()
    db: DBSettings = DBSettings()
    stack: StackSettings = StackSettings()
    mlflow: MLflowSettings = MLflowSettings()
    cvat: CvatSettings = CvatSettings()

    def to_yaml(self) -> str:
        data = mask_secrets(self.model_dump(mode="json"))
        return yaml.dump(data, Dumper=SAFE_DUMPER, sort_keys=False)


Config = TypeVar("Config", bound=Section)


# A real config holds a few hundred values; aliases may not expand it past this (a "billion
# laughs" file would otherwise hang every walk over it and print gigabytes in an error).
MAX_YAML_VALUES = 100_000
MAX_ERROR_LINES = 20


def clip(text: str, size: int = 200) -> str:
    """A user's text cut to `size` characters for a message."""
    return text if len(text) <= size else f"{text[:size]}... ({len(text):,} characters)"


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()  # keyword arguments only from Python 3.12
    short.maxstring = short.maxother = 80
    short.maxlist = short.maxdict = 6
    short.maxlevel = 2
    return short


_SHORT = _short_repr()


class _Refused(Exception):
    """YAML that parses but that a config may not hold; the message names the line."""


class _ConfigYamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and aliases that expand past MAX_YAML_VALUES."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, {}, set())
        return node

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` with own keys after it overrides, as YAML means
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _Refused(
                        f"line {line}: duplicate key {clip(str(key), 80)!r} (first at line "
                        f"{seen[key]}); keep one of them"
                    )
                seen[key] = line
            except TypeError:
                continue  # an unhashable key: the base class names it
        return super().construct_mapping(node, deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values `node` holds once every alias is expanded (shared nodes counted once
    per use); refuses an alias inside the node it names, and sizes over MAX_YAML_VALUES."""
    if id(node) in sizes:
        return sizes[id(node)]
    line = node.start_mark.line + 1
    if id(node) in open_nodes:
        raise _Refused(f"line {line}: an alias refers to the mapping or list that holds it")
    open_nodes.add(id(node))
    children = node.value if isinstance(node, yaml.SequenceNode) else []
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    size = 1 + sum(_expanded_size(child, sizes, open_nodes) for child in children)
    open_nodes.discard(id(node))
    if size > MAX_YAML_VALUES:
        raise _Refused(
            f"line {line}: aliases (*name) expand this to over {MAX_YAML_VALUES:,} values; "
            "write the values out, or use fewer aliases"
        )
    sizes[id(node)] = size
    return size


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A PyYAML error as one line: what and where (its own text spans several lines)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        context = f"{exc.context}: " if exc.context else ""
        return clip(f"{context}{exc.problem}{where}", 300)
    return clip(" ".join(str(exc).split()), 300)


def load_yaml(text: str, source: str, hint: str = "", kind: str = "YAML") -> Any:
    """YAML as a config reads it: safe tags only, no duplicate keys, aliases bounded; errors
    are one line naming `source` (and `hint`, what to do)."""
    try:
        return yaml.load(text, Loader=_ConfigYamlLoader)  # noqa: S506 (a SafeLoader)
    except _Refused as exc:
        raise ConfigError(f"{source}, {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid {kind}: {_yaml_problem(exc)}{hint}") from None
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply to be a config") from None


def _read_file(path: str) -> dict[str, Any]:
    from components.core import limits  # here, not at the top: boto3 stays out of start-up

    text = limits.read_user_text(path, limits.CONFIG)
    if path.endswith(".toml"):
        try:
            data = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, RecursionError) as exc:
            raise ConfigError(f"config file {path} is not valid YAML/TOML: {exc}") from None
    else:
        data = load_yaml(text, f"config file {path}", kind="YAML/TOML") or {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections, got {type(data).__name__}"
        )
    return data


def _parse_overrides(overrides: list[str]) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"override {clip(item)!r} is not of the form section.key=value "
                "(e.g. -o train.epochs=5)"
            )
        # OmegaConf reads the value as YAML; this bounds its aliases and names a bad value.
        hint = f"; quote it, e.g. -o '{clip(key, 80)}=\"{clip(value, 80)}\"'"
        load_yaml(value, f"override {clip(item)!r}: the value", hint)
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot parse overrides: {clip(str(exc), 300)}") from None


def _merge_omegaconf(
    layers: list[dict[str, Any]], overrides: list[str], path: str | Path | None
) -> Any:
    """The layers merged by OmegaConf, then the overrides, interpolations resolved."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    configs = [OmegaConf.create(layer) for layer in layers]
    configs.append(_parse_overrides(overrides))
    try:
        return OmegaConf.to_container(OmegaConf.merge(*configs), resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(
            f"cannot merge config {path or '(defaults)'}: {clip(' '.join(str(exc).split()), 300)}"
        ) from None


# What `_merge_plain` reads as OmegaConf does (through its YAML loader); anything else is left
# to OmegaConf. Words: text YAML reads as text (no YAML indicator, no `${`, not a YAML word).
DOTTED_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
PLAIN_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
PLAIN_FLOAT = re.compile(r"[-+]?[0-9]+\.[0-9]+")
PLAIN_WORD = re.compile(r"[A-Za-z/][A-Za-z0-9_./:@+-]*(?<!:)")
YAML_WORDS: dict[str, bool | None] = {
    **dict.fromkeys(("yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
    **dict.fromkeys(("no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False),
    **dict.fromkeys(("null", "Null", "NULL", "~", ""), None),
}
NOT_PLAIN = object()


def _plain_scalar(text: str) -> Any:
    """An override value as OmegaConf's YAML loader reads it, or NOT_PLAIN if not sure."""
    if text in YAML_WORDS:
        return YAML_WORDS[text]
    if PLAIN_INT.fullmatch(text):
        return int(text)
    if PLAIN_FLOAT.fullmatch(text):
        return float(text)
    if PLAIN_WORD.fullmatch(text):
        return text
    return NOT_PLAIN


def _is_plain(value: Any) -> bool:
    """A value OmegaConf would hand back unchanged (no interpolation, no missing `???`)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(map(_is_plain, value))
    if isinstance(value, str):
        return "${" not in value and "???" not in value
    return value is None or isinstance(value, bool | int | float)


def _plain_overrides(overrides: list[str]) -> dict[str, Any] | None:
    """`-o` overrides as a nested dict, or None when one needs OmegaConf to read it."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        value = _plain_scalar(text)
        if not sep or not DOTTED_KEY.fullmatch(key) or value is NOT_PLAIN:
            return None
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                return None  # `a=1` then `a.b=2`
        if isinstance(node.get(leaf), dict):
            return None  # `a.b=1` then `a=2`
        node[leaf] = value
    return out


def _merge_into(dest: dict[str, Any], src: dict[str, Any]) -> bool:
    """Merge `src` into `dest` as OmegaConf merges (dicts key by key, other values replaced);
    False where the two disagree on whether a key holds a mapping or a list."""
    for key, value in src.items():
        if key in dest:
            old = dest[key]
            if isinstance(old, dict) and isinstance(value, dict):
                if not _merge_into(old, value):
                    return False
                continue
            if isinstance(old, dict | list) or isinstance(value, dict | list):
                if type(old) is not type(value):
                    return False  # a mapping or list against something else: OmegaConf's call
        dest[key] = copy.deepcopy(value)
    return True


def _merge_plain(layers: list[dict[str, Any]], overrides: list[str]) -> dict[str, Any] | None:
    """The layers and overrides merged as plain dicts, or None where OmegaConf is needed
    (then `_merge_omegaconf` gives the result, or the error, OmegaConf gives)."""
    if not all(map(_is_plain, layers)):
        return None
    dotlist = _plain_overrides(overrides)
    if dotlist is None:
        return None
    merged: dict[str, Any] = {}
    for layer in [*layers, dotlist]:
        if not _merge_into(merged, layer):
            return None
    return merged


def load_into(
    model: type[Config],
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> Config:
    """Load the config file (optional), apply `extra` (CLI flags) and `-o` overrides, and
    validate the result as `model` (a whole-config root)."""
    layers = [_read_file(str(path)) if path else {}]
    if extra:
        layers.append(extra)
    merged = _merge_plain(layers, list(overrides))
    if merged is None:
        merged = _merge_omegaconf(layers, list(overrides), path)
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(exc, model, source=str(path) if path else None)
        ) from None


def parse_json_into(model: type[Config], text: str) -> Config:
    """The config as KFP components receive it: one JSON string parameter."""
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(exc, model, source="pipeline parameter")
        ) from None


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return None
        model = field.annotation
    return model


def describe_validation_error(
    exc: ValidationError, root: type[BaseModel], source: str | None = None
) -> str:
    """One line per problem (the first MAX_ERROR_LINES): the dotted key, the value given (cut
    short) and what is allowed."""
    where = f" in {source}" if source else ""
    lines = [f"invalid config{where}:"]
    errors = exc.errors()
    for err in errors[:MAX_ERROR_LINES]:
        loc = tuple(err["loc"])
        key = clip(".".join(str(p) for p in loc), 120)
        value = _SHORT.repr(err.get("input"))
        if err["type"] == "extra_forbidden":
            parent = _model_at(root, loc[:-1])
            allowed = ", ".join(parent.model_fields) if parent else "?"
            lines.append(f"  unknown key '{key}' (value {value}); allowed here: {allowed}")
        else:
            lines.append(f"  '{key}' = {value}: {clip(err['msg'])}")
    if len(errors) > MAX_ERROR_LINES:
        lines.append(f"  ... and {len(errors) - MAX_ERROR_LINES} more")
    if len(lines) == 2:  # one problem: one line
        return f"{lines[0]} {lines[1].strip()}"
    return "\n".join(lines)


def stage_run_dir(cfg: SharedConfig, stage: str) -> str:
    """`<out_root>/<project>/<subname>/<stage>`: where a CLI run of a stage writes by default."""
    from components.core import storage

    return storage.join(cfg.io.out_root, cfg.project.name, cfg.project.subname, stage)


def save_resolved(cfg: SharedConfig, run_dir: str | Path) -> str:
    """Write the resolved config (secrets masked) as cfg.yaml next to a run's outputs."""
    from components.core import storage

    uri = storage.join(str(run_dir), "cfg.yaml")
    storage.write_text(uri, cfg.to_yaml())
    return uri
