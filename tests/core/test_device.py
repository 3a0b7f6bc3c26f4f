"""`pick_device`: one function for infer, train and evaluate; errors name the stage's setting."""

import pytest
import torch

from components.core.device import pick_device
from components.core.errors import SegloopError


def test_auto_and_cpu_pick_a_device_that_exists_here():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu", "infer.device") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_cuda_without_a_gpu_names_the_setting_and_the_way_out():
    with pytest.raises(SegloopError, match=r"^train.device=cuda but no CUDA device .*auto or cpu"):
        pick_device("cuda", "train.device", local_rank=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_rank_gets_its_own_gpu_and_a_missing_index_is_named():
    assert pick_device("cuda", "train.device", local_rank=0) == torch.device("cuda", 0)
    missing = torch.cuda.device_count()
    with pytest.raises(SegloopError, match=f"infer.device=cuda:{missing}: only"):
        pick_device(f"cuda:{missing}", "infer.device")
