"""Class handling from the config, as a wrapper predictor: `infer.label_map` and `infer.drop`.

- `label_map: {model class: project label}` renames a predictor's classes; several model classes
  may map to one label (their probabilities add up); mapping to "background" is a drop.
- `drop: [model class, ...]` merges classes into background.

With either set and `project.labels` given, the output follows the project's labels file (its
ids and colours, so masks line up with CVAT and training); every kept model class must then name
a project label, directly or through `label_map`. Without a labels file the output labels are
background + the mapped names, in the model's order. Per-class thresholds (`infer.threshold`)
then use the mapped names; `infer.min_area` applies after the decision, as before.
"""

from __future__ import annotations

import torch

from components.core.errors import SegloopError
from components.core.labels import Label, LabelSet
from components.core.predictor import Predictor, PredictorInfo

BACKGROUND = "background"


class ClassMapPredictor(Predictor):
    """`inner` with its classes renamed, merged and dropped. See the module docstring."""

    def __init__(
        self,
        inner: Predictor,
        label_map: dict[str, str] | None = None,
        drop: list[str] | None = None,
        target: LabelSet | None = None,
    ):
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)
        label_map, drop = dict(label_map or {}), list(drop or [])
        source = inner.info.labels
        model_classes = source.names[1:]
        for key, where in [(k, "infer.label_map") for k in label_map] + [
            (k, "infer.drop") for k in drop
        ]:
            if key not in model_classes:
                raise SegloopError(
                    f"{where} names {key!r}, which predictor {self.name!r} does not have; "
                    f"its classes are {model_classes}"
                )
        both = sorted(set(label_map) & set(drop))
        if both:
            raise SegloopError(f"classes {both} are both in infer.label_map and infer.drop")

        # Output name of every source channel (channel 0 is always background).
        out_names = [BACKGROUND]
        for name in model_classes:
            out_names.append(BACKGROUND if name in drop else label_map.get(name, name))
        if target is None:
            labels = [Label(name=BACKGROUND, id=0, color=source.labels[0].color)]
            for src, name in zip(source.labels[1:], out_names[1:], strict=True):
                if name != BACKGROUND and name not in {lab.name for lab in labels}:
                    labels.append(Label(name=name, id=len(labels), color=src.color))
            target = LabelSet(labels=labels)
        else:
            if target.names[0] != BACKGROUND:
                raise SegloopError(
                    f"project labels: class 0 is {target.names[0]!r}; it must be 'background'"
                )
            missing = sorted({n for n in out_names if n not in target.names})
            if missing:
                raise SegloopError(
                    f"predictor {self.name!r}: classes {missing} are not in the project labels "
                    f"{target.names[1:]}; map them with infer.label_map (model class: project "
                    "label) or merge them into background with infer.drop"
                )
        self.target = target
        index = {name: i for i, name in enumerate(target.names)}
        self._index = torch.tensor([index[n] for n in out_names], dtype=torch.long)
        self._in_classes = source.num_classes
        info = inner.info
        self._info = PredictorInfo(
            labels=target,
            tile_size=info.tile_size,
            pad_divisor=info.pad_divisor,
            mean=info.mean,
            std=info.std,
        )

    @property
    def info(self) -> PredictorInfo:
        return self._info

    def to(self, device: torch.device) -> ClassMapPredictor:
        self.inner = self.inner.to(device) or self.inner
        return self

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        probs = self.inner.predict(batch)
        n, _, h, w = batch.shape
        if not isinstance(probs, torch.Tensor) or tuple(probs.shape) != (
            n,
            self._in_classes,
            h,
            w,
        ):
            got = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
            raise SegloopError(
                f"predictor {self.name!r} returned {got}; expected probabilities of shape "
                f"{(n, self._in_classes, h, w)} (batch, one channel per label, tile height, width)"
            )
        out = probs.new_zeros((n, self.target.num_classes, h, w))
        return out.index_add_(1, self._index.to(probs.device), probs)


def apply_class_handling(
    predictor: Predictor,
    label_map: dict[str, str] | None,
    drop: list[str] | None,
    labels_uri: str | None = None,
) -> Predictor:
    """`predictor` wrapped for `infer.label_map` / `infer.drop`; unchanged when both are empty."""
    if not label_map and not drop:
        return predictor
    target = LabelSet.load(labels_uri) if labels_uri else None
    return ClassMapPredictor(predictor, label_map, drop, target)
