"""`train.init_from`: start training from an earlier model's weights instead of from scratch.

In the active-learning loop each round fine-tunes the champion on all labels so far: the new
model keeps what the earlier rounds learned, and a round's schedule only has to fit what the
new labels add. `train.init_from` is a model URI (folder, s3://, runs:/, models:/) or
`alias:<alias>`: the run's registered model at that alias (`alias:champion`), resolved when the task
runs. Before the first model is registered there is no champion: then training starts from
scratch and says so. The model must have the same architecture, encoder, decoder options and
labels as the one this config builds; only the weights are taken (not the optimizer state, the
epoch count or the normalisation, which come from this run's data).
"""

from __future__ import annotations

import logging

import torch

from components.core import tracking
from components.core.checkpoint import load_checkpoint
from components.core.errors import SegloopError
from components.core.model import ModelSpec
from components.train.settings import TrainConfig

log = logging.getLogger(__name__)
ALIAS = "alias:"  # `alias:champion`: the run's registered model at that alias


def init_uri(cfg: TrainConfig) -> str | None:
    """The model URI `train.init_from` names now; None when its alias does not exist yet."""
    value = cfg.train.init_from
    if not value or not value.startswith(ALIAS):
        return value or None
    alias, name = value[len(ALIAS) :], tracking.registered_model_name(cfg)
    from mlflow.exceptions import MlflowException

    try:
        version = tracking.client(cfg).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        log.info("train: %s has no alias %r yet; training from scratch", name, alias)
        return None
    return f"models:/{name}/{version.version}"


def _mismatch(old: ModelSpec, new: ModelSpec) -> list[str]:
    """What differs between the model we start from and the one this config builds."""
    fields = ("arch", "encoder_name", "in_channels", "classes", "model_kwargs")
    out = [
        f"{f} {getattr(old, f)!r} != {getattr(new, f)!r}"
        for f in fields
        if getattr(old, f) != getattr(new, f)
    ]
    old_names, new_names = [lb.name for lb in old.labels], [lb.name for lb in new.labels]
    if old_names != new_names:
        out.append(f"labels {old_names} != {new_names}")
    return out


def warm_start(cfg: TrainConfig, model: torch.nn.Module, spec: ModelSpec) -> str | None:
    """Load the `train.init_from` weights into `model`; returns the URI used (None: scratch)."""
    uri = init_uri(cfg)
    if uri is None:
        return None
    start, old = load_checkpoint(uri, "cpu", tracking.tracking_uri(cfg))
    problems = _mismatch(old, spec)
    if problems:
        raise SegloopError(
            f"train.init_from={cfg.train.init_from} ({uri}) is a different model: "
            + "; ".join(problems)
            + ". Fine-tuning needs the same architecture and labels; unset train.init_from to "
            "train from scratch"
        )
    model.load_state_dict(start.state_dict())
    log.info("train: starting from the weights of %s", uri)
    return uri
