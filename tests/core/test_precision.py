"""One AMP rule for infer, train and evaluate."""

import pytest
import torch

from components.core.errors import SegloopError
from components.core.precision import cpu_has_native_bf16, pick_amp

CPU = torch.device("cpu")


def test_auto_on_cpu_follows_native_bf16_support():
    expected = torch.bfloat16 if cpu_has_native_bf16() else None
    assert pick_amp("auto", CPU) is expected


def test_explicit_modes():
    assert pick_amp("off", CPU) is None
    assert pick_amp("bf16", CPU) is torch.bfloat16
    with pytest.raises(SegloopError, match="fp16 needs CUDA"):
        pick_amp("fp16", CPU)
