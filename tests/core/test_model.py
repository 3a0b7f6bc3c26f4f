"""Model factory and ModelSpec validation (tiny encoders, no pretrained weights)."""

import pytest
import segmentation_models_pytorch as smp
import torch

from components.core.errors import SegloopError
from components.core.labels import Label
from components.core.model import ModelSpec, archs, build_from_spec, build_model

LABELS3 = [
    Label(name="background", id=0, color="#000000"),
    Label(name="crop", id=1, color="#00ff00"),
    Label(name="weed", id=2, color="#ff0000"),
]

SMALL = {
    "Unet": {"decoder_channels": (16, 16, 8, 8, 8)},
    "UnetPlusPlus": {"decoder_channels": (16, 16, 8, 8, 8)},
    "FPN": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
    "DeepLabV3Plus": {"decoder_channels": 16},
    "Segformer": {"decoder_segmentation_channels": 16},
}


@pytest.mark.parametrize("arch", list(SMALL))
def test_build_each_arch_gives_logits_of_input_size(arch):
    model = build_model(arch, "resnet18", None, in_channels=3, classes=3, **SMALL[arch]).eval()
    with torch.inference_mode():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 3, 64, 64)


def test_unknown_arch_lists_every_arch_the_installed_smp_registers():
    registered = [cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()]
    assert list(archs()) == registered and "DPT" in registered
    with pytest.raises(SegloopError, match="unknown model arch 'UNetX'; allowed: ") as err:
        build_model("UNetX", "resnet18")
    assert str(err.value).endswith(", ".join(registered))


def test_dpt_builds_with_a_vit_encoder():
    """DPT (not in the hand-kept list this replaced) wants a timm ViT encoder."""
    model = build_model("dpt", "tu-vit_tiny_patch16_224", None, classes=3, dynamic_img_size=True)
    with torch.inference_mode():
        assert model.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_unknown_encoder_is_named():
    with pytest.raises(SegloopError, match="unknown encoder 'resnet9000'"):
        build_model("Unet", "resnet9000")


def test_bad_option_is_explained():
    with pytest.raises(SegloopError, match="cannot build Unet"):
        build_model("Unet", "resnet18", decoder_channels=(16, 8))


def test_spec_validates_labels_against_classes():
    spec = ModelSpec(arch="unet", encoder_name="resnet18", classes=3, labels=LABELS3)
    assert spec.arch == "Unet" and not spec.binary and spec.segloop_version
    binary = ModelSpec(arch="FPN", encoder_name="resnet18", classes=1, labels=LABELS3[:2])
    assert binary.binary and binary.num_labels == 2
    with pytest.raises(ValueError, match="3 labels for a model with 2 output"):
        ModelSpec(arch="Unet", encoder_name="resnet18", classes=2, labels=LABELS3)
    with pytest.raises(ValueError, match="multiple of pad_divisor"):
        ModelSpec(arch="Unet", encoder_name="resnet18", classes=3, labels=LABELS3, tile_size=100)
    with pytest.raises(ValueError, match="mean/std need 3 values"):
        ModelSpec(arch="Unet", encoder_name="resnet18", classes=3, labels=LABELS3, mean=(0.5,))


def test_build_from_spec_roundtrips_json():
    spec = ModelSpec(
        arch="Unet",
        encoder_name="resnet18",
        classes=3,
        labels=LABELS3,
        model_kwargs={"decoder_channels": [16, 16, 8, 8, 8]},
        data_hash="abc",
    )
    again = ModelSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    model = build_from_spec(again)
    assert sum(p.numel() for p in model.parameters()) > 0
