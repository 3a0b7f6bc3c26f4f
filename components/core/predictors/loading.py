"""Custom predictors: from a module path or a `segloop.predictors` entry point.

`infer.predictor` (or `--predictor`) names a predictor three ways:

- a registered name (`smp`, `exg`, or one a plugin registered with `register_predictor`);
- a module path `my_pkg.my_model:build` (the module must be importable: installed, or on
  `PYTHONPATH`), or a file path `my_project/my_model.py:build` (relative to the current folder;
  handy for a scaffold, not for a cluster, where the module must be installed in the image);
- an entry point name in the group `segloop.predictors` of an installed distribution, e.g. in
  its pyproject.toml: `[project.entry-points."segloop.predictors"] weeds = "my_pkg.my_model:build"`.

The target is a factory: a callable returning a `components.core.predictor.Predictor` (a
`Predictor` subclass is one too). It is called with those of `model` (the model URI or None),
`device` (a torch.device) and `params` that its signature names. When `params` is annotated with
a pydantic model, `infer.predictor_params` is validated into it (unknown or wrong keys are
errors naming the predictor); otherwise the factory gets the dict.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
import typing
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from components.core.errors import SegloopError
from components.core.labels import LabelSet
from components.core.predictor import Predictor, PredictorInfo

ENTRY_POINT_GROUP = "segloop.predictors"
# `pkg.module:attr`, or `path/to/file.py:attr` (a file relative to the current folder).
MODULE_PATH = re.compile(r"^([A-Za-z_][\w.]*|[^:]+\.py):[A-Za-z_][\w.]*$")

Factory = Callable[[str | None, torch.device, dict[str, Any]], Predictor]
M = typing.TypeVar("M", bound=BaseModel)


def validate_params(name: str, model: type[M], params: dict[str, Any] | None) -> M:
    """`params` validated into `model`, or a SegloopError naming the predictor and each key."""
    try:
        return model.model_validate(dict(params or {}))
    except ValidationError as exc:
        lines = [f"predictor {name!r}: invalid infer.predictor_params:"]
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(params)"
            if err["type"] == "extra_forbidden":
                lines.append(f"  unknown param '{key}'")
            else:
                lines.append(f"  '{key}' = {err.get('input')!r}: {err['msg']}")
        lines.append(f"  allowed params: {', '.join(model.model_fields) or '(none)'}")
        raise SegloopError("\n".join(lines)) from None


def _import_file(spec: str, path: Path) -> ModuleType:
    if not path.is_file():
        raise SegloopError(
            f"predictor {spec!r}: no file {path} (relative paths start at the current folder "
            f"{Path.cwd()})"
        )
    # Registered under its stem, so that pickling and dataclasses find the module again.
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[path.stem] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception:
        sys.modules.pop(path.stem, None)
        raise
    return module


def _import_target(spec: str) -> Any:
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            target: Any = _import_file(spec, Path(module_name))
        else:
            target = importlib.import_module(module_name)
    except SegloopError:
        raise
    except ImportError as exc:
        raise SegloopError(
            f"predictor {spec!r}: cannot import module {module_name!r} ({exc}); install the "
            "package or put its folder on PYTHONPATH"
        ) from exc
    except Exception as exc:
        raise SegloopError(
            f"predictor {spec!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr.split("."):
        if not hasattr(target, part):
            raise SegloopError(f"predictor {spec!r}: module {module_name!r} has no {attr!r}")
        target = getattr(target, part)
    return target


def _entry_point(name: str) -> Any | None:
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        return None
    try:
        return found[0].load()
    except Exception as exc:
        raise SegloopError(
            f"predictor {name!r}: entry point {found[0].value!r} ({ENTRY_POINT_GROUP}) cannot be "
            f"loaded: {type(exc).__name__}: {exc}"
        ) from exc


def entry_point_names() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def _params_model(func: Callable) -> type[BaseModel] | None:
    """The pydantic model the factory's `params` parameter is annotated with, if any."""
    target = func.__init__ if inspect.isclass(func) else func
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: treat params as a plain dict
        return None
    hint = hints.get("params")
    return hint if inspect.isclass(hint) and issubclass(hint, BaseModel) else None


def wrap_factory(name: str, func: Callable) -> Factory:
    """A registry-style factory around a user's callable: params validated, result checked."""
    if not callable(func):
        raise SegloopError(
            f"predictor {name!r} is a {type(func).__name__}, not a callable that returns a Predictor"
        )
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        signature = None
    accepted = set(signature.parameters) if signature else {"model", "device", "params"}
    takes_all = signature is None or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    )
    params_model = _params_model(func)

    def factory(model: str | None, device: torch.device, params: dict[str, Any]) -> Predictor:
        kwargs: dict[str, Any] = {}
        if takes_all or "model" in accepted:
            kwargs["model"] = model
        if takes_all or "device" in accepted:
            kwargs["device"] = device
        if params_model is not None:
            kwargs["params"] = validate_params(name, params_model, params)
        elif takes_all or "params" in accepted:
            kwargs["params"] = dict(params)
        elif params:
            raise SegloopError(
                f"predictor {name!r} takes no params, got {sorted(params)} in infer.predictor_params"
            )
        try:
            predictor = func(**kwargs)
        except SegloopError as exc:
            raise SegloopError(f"predictor {name!r}: {exc}") from exc
        except Exception as exc:
            raise SegloopError(
                f"predictor {name!r} failed to build: {type(exc).__name__}: {exc}"
            ) from exc
        return check_predictor(name, predictor)

    return factory


def check_predictor(name: str, predictor: Any) -> Predictor:
    """A predictor whose `info` is usable, or a SegloopError naming it and what is wrong."""
    if not isinstance(predictor, Predictor):
        raise SegloopError(
            f"predictor {name!r} returned {type(predictor).__name__}, not a "
            "components.core.predictor.Predictor"
        )
    try:
        info = predictor.info
    except SegloopError as exc:
        raise SegloopError(f"predictor {name!r}: {exc}") from exc
    except Exception as exc:
        raise SegloopError(
            f"predictor {name!r}: reading its info failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(info, PredictorInfo):
        raise SegloopError(
            f"predictor {name!r}: info is a {type(info).__name__}, not a PredictorInfo "
            "(labels, tile_size, pad_divisor, mean, std)"
        )
    if not isinstance(info.labels, LabelSet):
        raise SegloopError(
            f"predictor {name!r} declares no labels: info.labels is a "
            f"{type(info.labels).__name__}, not a LabelSet (background + its classes)"
        )
    if info.labels.names[0] != "background":
        raise SegloopError(
            f"predictor {name!r}: class 0 is {info.labels.names[0]!r}; class 0 must be "
            "'background' (map the model's names with infer.label_map)"
        )
    # Errors later (wrong output shape, a failing predict) name `predictor.name`: make it ours.
    if getattr(predictor, "name", Predictor.name) == Predictor.name:
        try:
            predictor.name = name
        except AttributeError:
            pass
    return predictor


def resolve_factory(name: str) -> Factory:
    """The factory for a predictor that is not registered by name: module path or entry point."""
    from components.core import predictor as registry
    from components.core.predictors import exg  # noqa: F401 - the built-ins register on import

    known = registry.registered_factory(name)
    if known is not None:
        return known
    if MODULE_PATH.match(name):
        return wrap_factory(name, _import_target(name))
    target = _entry_point(name)
    if target is not None:
        return wrap_factory(name, target)
    plugins = entry_point_names()
    raise SegloopError(
        f"unknown predictor {name!r}; known: {', '.join(registry.predictor_names())}"
        + (f"; entry points ({ENTRY_POINT_GROUP}): {', '.join(plugins)}" if plugins else "")
        + "; or give a module path like my_pkg.my_model:build"
    )


def make_predictor(
    name: str, model: str | None, device: torch.device, params: dict[str, Any] | None = None
) -> Predictor:
    """Build the named predictor on `device`: a registered name (`smp`, `exg`), a module path
    (pkg.mod:build) or an entry point; unknown names list the known ones."""
    predictor = resolve_factory(name)(model, device, dict(params or {}))
    if not isinstance(predictor, Predictor):
        raise SegloopError(
            f"predictor {name!r} returned {type(predictor).__name__}, "
            "not a components.core.predictor.Predictor"
        )
    return predictor
