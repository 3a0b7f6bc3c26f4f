"""The predictor interface: what `segloop infer` runs, whatever the model behind it.

In the spirit of cvat-sdk's auto-annotation function spec, a predictor is small and typed:

- `info: PredictorInfo` declares its labels (a `LabelSet`, class 0 = background, label id ==
  output channel) and how it wants to be fed: preferred `tile_size`, `pad_divisor` (tile sides
  are multiples of it) and per-channel `mean`/`std` on the 0..1 scale.
- `predict(batch) -> probabilities`:
  * input: float32 tensor N x 3 x H x W on the predictor's device, RGB, already normalized by
    the runner as `(uint8 / 255 - mean) / std` (mean 0 and std 1 give plain 0..1 RGB), in
    channels_last memory format; H and W are multiples of `pad_divisor`. The runner calls it
    under `torch.inference_mode()` and, when AMP is on, `torch.autocast`.
  * output: float tensor N x C x H x W of per-class probabilities (C = number of labels; each
    pixel sums to 1 for multi-class models). The runner blends tiles, thresholds and writes.
- `to(device)`: move to a device (default: nothing to move).

A predictor needs no tiling, batching, decoding or output code: `components.infer` does all of
that. Register a factory under a name with `register_predictor(name, factory)`; a factory is
`factory(model: str | None, device: torch.device, params: dict) -> Predictor`;
`components.core.predictors.loading.make_predictor` builds one by name, module path or entry point.
Built in: `smp` (`SmpPredictor`, a segloop checkpoint from any model URI; `build_smp` takes the
MLflow tracking URI that `models:/` and `runs:/` URIs resolve on).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from components.core.errors import SegloopError
from components.core.labels import LabelSet
from components.core.model import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

log = logging.getLogger("segloop.predictor")


@dataclass(frozen=True)
class PredictorInfo:
    labels: LabelSet
    tile_size: int = 512
    pad_divisor: int = 32
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.labels.num_classes < 2:
            raise SegloopError("a predictor needs at least two labels (background + one class)")
        if self.tile_size % self.pad_divisor:
            raise SegloopError(
                f"predictor tile_size {self.tile_size} is not a multiple of its pad_divisor {self.pad_divisor}"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise SegloopError("predictor mean/std need 3 values (RGB)")

    @property
    def num_classes(self) -> int:
        return self.labels.num_classes


class Predictor(ABC):
    """Turns a normalized image batch into per-class probabilities. See the module docstring."""

    name: str = "predictor"

    @property
    @abstractmethod
    def info(self) -> PredictorInfo: ...

    @abstractmethod
    def predict(self, batch: torch.Tensor) -> torch.Tensor: ...

    def to(self, device: torch.device) -> Predictor:
        return self


class SmpPredictor(Predictor):
    """A segloop checkpoint (smp model + model.json): softmax for multi-class, sigmoid for binary."""

    name = "smp"

    def __init__(
        self,
        model: torch.nn.Module,
        spec: ModelSpec,
        channels_last: bool = True,
        fuse_batchnorm: bool = True,
    ):
        if spec.in_channels != 3:
            raise SegloopError(
                f"model has in_channels={spec.in_channels}; segloop infer feeds RGB (3 channels)"
            )
        self.model = model.eval()
        self.spec = spec
        self.last_embedding: torch.Tensor | None = None  # see enable_embeddings
        self._embed_by_encoder = False
        self.channels_last = channels_last
        # The network that runs: BatchNorm folded into the convolutions where the graph allows
        # (same results, less work; on CPU it also keeps bf16 autocast from bouncing to fp32).
        self.net = _fold_batchnorm(self.model) if fuse_batchnorm else self.model
        self._info = PredictorInfo(
            labels=spec.label_set,
            tile_size=spec.tile_size,
            pad_divisor=spec.pad_divisor,
            mean=tuple(spec.mean),
            std=tuple(spec.std),
        )

    @classmethod
    def from_uri(
        cls, uri: str, device: torch.device | str = "cpu", tracking_uri: str | None = None
    ) -> SmpPredictor:
        """From any model URI; `models:/` and `runs:/` resolve on `tracking_uri` (see
        `components.core.checkpoint`)."""
        from components.core.checkpoint import load_checkpoint

        model, spec = load_checkpoint(uri, device, tracking_uri=tracking_uri)
        return cls(model, spec).to(torch.device(device))

    @property
    def info(self) -> PredictorInfo:
        return self._info

    def to(self, device: torch.device) -> SmpPredictor:
        self.net.to(device)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        return self

    def enable_embeddings(self) -> None:
        """From now on keep each tile's deepest encoder features, averaged over the tile
        (`last_embedding`, N x D), for selection in the model's own feature space. A Unet's
        `decoder.center` takes exactly those features, so a hook there costs nothing extra (it
        survives BatchNorm folding: fx keeps leaf modules by name); other architectures run the
        encoder once more."""
        if getattr(self, "_embed_hook", None) is not None:
            return  # enabled already (a predictor instance reused across runs)
        try:
            center = self.net.get_submodule("decoder.center")
        except AttributeError:
            center = None
        self._embed_by_encoder = center is None
        if center is not None:
            self._embed_hook = center.register_forward_pre_hook(self._keep_embedding)

    def _keep_embedding(self, _module: torch.nn.Module, args: tuple) -> None:
        self.last_embedding = args[0].detach().float().mean(dim=(2, 3))

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        if self._embed_by_encoder:
            encoder = self.model.encoder.to(batch.device)
            self.last_embedding = encoder(batch)[-1].detach().float().mean(dim=(2, 3))
        # fp32 and NCHW in one copy: softmax over the channels of a channels_last tensor is
        # several times slower on CPU (measured: 17 ms vs 5 ms per batch of 8 tiles of 512 px),
        # and the blender then reads each tile's probabilities contiguously.
        logits = self.net(batch).to(torch.float32, memory_format=torch.contiguous_format)
        if self.spec.binary:
            fg = torch.sigmoid(logits)
            return torch.cat([1.0 - fg, fg], dim=1)
        return torch.softmax(logits, dim=1)


def _fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of an eval-mode model with Conv+BatchNorm folded, or the model itself.

    torch.fx folds every pair where the graph traces; otherwise only pairs whose order is
    certain are folded: adjacent in an `nn.Sequential`, and torchvision ResNet's convN/bnN.
    """
    import copy

    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model)
    except Exception as exc:  # not fx-traceable (dynamic control flow)
        log.debug("fx BatchNorm folding skipped for %s: %s", type(model).__name__, exc)
    folded = copy.deepcopy(model)
    _fold_known_pairs(folded)
    return folded


def _fold_known_pairs(module: torch.nn.Module) -> None:
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    conv_bn = (torch.nn.Conv2d, torch.nn.BatchNorm2d)
    if isinstance(module, torch.nn.Sequential):
        names = list(module._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, conv_bn[0]) and type(bn) is conv_bn[1]:
                module._modules[a] = fuse_conv_bn_eval(conv, bn)
                module._modules[b] = torch.nn.Identity()
    if isinstance(module, BasicBlock | Bottleneck | ResNet):  # forward: convN -> bnN
        for i in (1, 2, 3):
            conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
            if isinstance(conv, conv_bn[0]) and type(bn) is conv_bn[1]:
                setattr(module, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                setattr(module, f"bn{i}", torch.nn.Identity())
    for child in module.children():
        _fold_known_pairs(child)


def _innermost(predictor: Any) -> Any:
    """The predictor a wrapper (class mapping: `.inner`) runs."""
    while hasattr(predictor, "inner"):
        predictor = predictor.inner
    return predictor


def enable_embeddings(predictor: Predictor) -> bool:
    """Ask the predictor (or the one it wraps) to keep per-tile embeddings; False where it
    has none to give (a predictor without an encoder, such as ExG)."""
    inner = _innermost(predictor)
    if not hasattr(inner, "enable_embeddings"):
        return False
    inner.enable_embeddings()
    return True


def last_embedding(predictor: Predictor) -> torch.Tensor | None:
    """The last batch's per-tile embeddings (N x D), if the predictor keeps them."""
    return getattr(_innermost(predictor), "last_embedding", None)


PredictorFactory = Callable[[str | None, torch.device, dict[str, Any]], Predictor]
_FACTORIES: dict[str, PredictorFactory] = {}


def register_predictor(name: str, factory: PredictorFactory) -> None:
    _FACTORIES[name] = factory


def predictor_names() -> list[str]:
    return sorted(_FACTORIES)


def registered_factory(name: str) -> PredictorFactory | None:
    """The factory registered under `name`; other names resolve in `components.core.predictors`."""
    return _FACTORIES.get(name)


def build_smp(
    model: str | None,
    device: torch.device,
    params: dict[str, Any],
    tracking_uri: str | None = None,
) -> SmpPredictor:
    """The `smp` predictor; MLflow model URIs resolve on `tracking_uri`."""
    if params:
        raise SegloopError(f"predictor 'smp' takes no params, got {sorted(params)}")
    if not model:
        raise SegloopError(
            "predictor 'smp' needs a model: --model PATH|s3://...|models:/<name>@<alias> "
            "(or infer.model in the config)"
        )
    return SmpPredictor.from_uri(model, device, tracking_uri=tracking_uri)


def smp_factory(model: str | None, device: torch.device, params: dict[str, Any]) -> Predictor:
    """The registry's `smp` factory (MLflow URIs on $MLFLOW_TRACKING_URI); `segloop infer` calls
    `build_smp` with the configured tracking URI instead."""
    return build_smp(model, device, params)


register_predictor("smp", smp_factory)
