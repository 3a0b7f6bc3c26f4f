"""Predictors beyond `smp`: the `exg` vegetation pre-annotator, custom predictors from a module
path and from a `segloop.predictors` entry point, `infer.label_map` / `infer.drop`, and clear
errors for bad predictors. Everything runs through the real `infer` stage on tiny images."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from config_helpers import infer_config  # tests/ is on sys.path
from skimage.filters import threshold_otsu

from components.core.errors import SegloopError
from components.core.images import load_mask, save_rgb
from components.core.labels import Label, LabelSet
from components.core.predictors.exg import ExgPredictor, otsu_threshold
from components.core.predictors.loading import make_predictor
from components.infer.stage import run_infer
from pipelines.cli import cli
from pipelines.demo.synthetic import make_dataset

# A predictor module as users write one: typed params, labels, probabilities. `KIND` selects a
# (mis)behaviour for the bad-predictor tests.
CUSTOM = '''
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from components.core.labels import Label, LabelSet
from components.core.predictor import Predictor, PredictorInfo

KIND = "{kind}"


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weed_share: float = 0.5  # weed probability in the left half of each tile


class ThreeClass(Predictor):
    """background, weed (left half of each tile), crop (right half)."""

    def __init__(self, params: Params):
        self.params = params
        names = ["background"] if KIND == "one-label" else ["background", "weed", "crop"]
        labels = LabelSet(
            labels=[Label(name=n, id=i, color=f"#0000{{i:02x}}") for i, n in enumerate(names)]
        )
        self._info = PredictorInfo(labels, tile_size=32, pad_divisor=1, mean=(0, 0, 0), std=(1, 1, 1))

    @property
    def info(self):
        return None if KIND == "no-info" else self._info

    def predict(self, batch):
        if KIND == "raises":
            raise RuntimeError("CUDA out of memory (pretend)")
        n, _, h, w = batch.shape
        out = torch.zeros(n, 3, h, w)
        out[:, 1, :, : w // 2] = self.params.weed_share
        out[:, 0, :, : w // 2] = 1 - self.params.weed_share
        out[:, 2, :, w // 2 :] = 0.9
        out[:, 0, :, w // 2 :] = 0.1
        return out[:, :2] if KIND == "wrong-shape" else out


def build(model: str | None, device: torch.device, params: Params) -> Predictor:
    if KIND == "build-fails":
        raise FileNotFoundError("weights.pt")
    return ThreeClass(params)
'''


def write_module(folder: Path, name: str, kind: str = "ok") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(CUSTOM).format(kind=kind))
    return path


@pytest.fixture
def one_image(tmp_path) -> Path:
    folder = tmp_path / "images"
    save_rgb(folder / "a.png", np.full((32, 48, 3), 90, np.uint8))
    return folder


# ---------------------------------------------------------------- exg


def test_otsu_splits_two_modes_in_the_middle():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.0, 0.02, 5000), rng.normal(0.6, 0.05, 1000)])
    assert 0.1 < otsu_threshold(values) < 0.45
    assert otsu_threshold(np.full(10, 0.3)) == pytest.approx(0.3)


def test_otsu_is_skimages_split_moved_to_the_middle_of_an_empty_gap():
    rng = np.random.default_rng(1)
    # Overlapping modes, no empty bins: skimage's split (the upper edge of its bin).
    values = np.concatenate([rng.normal(0.0, 0.1, 4000), rng.normal(0.4, 0.1, 2000)])
    width = np.ptp(values) / 256
    assert otsu_threshold(values) == pytest.approx(threshold_otsu(values) + width / 2)
    # Separated modes: skimage's split hugs the lower mode; ours lies in the middle of the gap.
    low, high = rng.normal(0.0, 0.02, 5000), rng.normal(0.6, 0.05, 1000)
    values = np.concatenate([low, high])
    width = np.ptp(values) / 256
    assert threshold_otsu(values) < low.max() + width
    assert abs(otsu_threshold(values) - (low.max() + high.min()) / 2) <= width


def test_exg_pre_annotates_synthetic_field_images(tmp_path):
    data = make_dataset(
        tmp_path / "data", 12, seed=0, db_url=f"sqlite:///{tmp_path / 'db.sqlite'}", size=(128, 128)
    )
    out = tmp_path / "out"
    metrics = run_infer(
        infer_config(f"io.out_root={tmp_path / 'runs'}", "infer.predictor=exg"),
        images=str(tmp_path / "data" / "images"),
        out=str(out),
    )
    assert metrics["ok"] == 12 and metrics["predictor"] == "exg"
    assert LabelSet.load(out / "labels.json").names == ["background", "vegetation"]
    inter = union = green_inter = green_union = 0
    for record in data.records:
        pred = load_mask(out / "masks" / f"{record['image_id']}.png") > 0
        truth = load_mask(record["mask_uri"])
        inter += int((pred & (truth > 0)).sum())
        union += int((pred | (truth > 0)).sum())
        green = np.isin(truth, [1, 2])  # grass, broadleaf; rosettes are red (low ExG)
        green_inter += int((pred & green).sum())
        green_union += int((pred | green).sum())
    # Measured on these 12 images (seed 0, 128 px, JPEG, with crop residue and uneven light):
    # foreground IoU 0.801, green-plant IoU 0.915 (the red rosettes are missed by design: their
    # ExG is negative; shadows dim some leaves below the Otsu threshold). Floors a bit below.
    assert inter / union > 0.77
    assert green_inter / green_union > 0.89


def test_exg_fixed_threshold_and_cleanup_on_a_drawn_plant():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:] = (120, 90, 60)  # soil
    image[20:40, 20:40] = (60, 140, 40)  # a leaf
    image[5, 5] = (60, 140, 40)  # a one-pixel speck: removed by opening
    predictor = ExgPredictor()
    predictor.params = predictor.params.model_copy(update={"method": "fixed"})
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    probs = predictor.predict(x)
    mask = probs.argmax(dim=1)[0].numpy()
    assert mask[5, 5] == 0 and mask[21:39, 21:39].all()
    assert 396 <= mask.sum() <= 400  # opening with a disk rounds the square's 4 corners at most
    assert torch.allclose(probs.sum(dim=1), torch.ones(1, 64, 64))


def test_exg_params_are_validated_with_clear_errors():
    with pytest.raises(SegloopError) as error:
        make_predictor("exg", None, torch.device("cpu"), {"method": "kmeans", "treshold": 0.2})
    message = str(error.value)
    assert "predictor 'exg'" in message
    assert "'method' = 'kmeans'" in message and "unknown param 'treshold'" in message
    assert "allowed params: method, threshold" in message
    assert make_predictor("exg", None, torch.device("cpu"), {"label": "weed"}).info.labels.names[
        1
    ] == ("weed")


# ---------------------------------------------------------------- custom predictors


def test_module_path_predictor_runs_through_infer_with_label_map_and_drop(
    tmp_path, one_image, monkeypatch
):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "weeds_model_a")
    out = tmp_path / "out"
    metrics = run_infer(
        infer_config(
            f"io.out_root={tmp_path / 'runs'}",
            "infer.predictor=weeds_model_a:build",
            "infer.predictor_params.weed_share=0.8",
            "infer.label_map.weed=plant",
            "infer.drop=[crop]",
        ),
        images=str(one_image),
        out=str(out),
    )
    assert metrics["ok"] == 1 and metrics["predictor"] == "weeds_model_a:build"
    assert LabelSet.load(out / "labels.json").names == ["background", "plant"]
    mask = load_mask(out / "masks" / "a.png")
    assert (mask[:, :16] == 1).all()  # weed (0.8) -> plant
    assert (mask[:, 32:] == 0).all()  # crop dropped into background


def test_label_map_follows_the_project_labels_file(tmp_path, one_image, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "weeds_model_b")
    labels = LabelSet(
        labels=[
            Label(name="background", id=0),
            Label(name="soybean", id=1, color="#00ff00"),
            Label(name="weed", id=2, color="#ff0000"),
        ]
    )
    labels.save(tmp_path / "labels.yaml")
    base = [
        "infer.predictor=weeds_model_b:build",
        f"project.labels={tmp_path / 'labels.yaml'}",
        "infer.threshold={soybean: 0.95}",  # per-class thresholds use the mapped names
    ]
    out = tmp_path / "out"
    run_infer(
        infer_config(f"io.out_root={tmp_path / 'runs'}", *base, "infer.label_map.crop=soybean"),
        images=str(one_image),
        out=out,
    )
    assert LabelSet.load(out / "labels.json") == labels
    mask = load_mask(out / "masks" / "a.png")
    assert (mask[:, :16] == 2).all()  # weed keeps its name: project id 2
    assert (mask[:, 32:] == 0).all()  # soybean at 0.9 < its threshold 0.95

    with pytest.raises(SegloopError, match=r"classes \['crop'\] are not in the project labels"):
        run_infer(
            infer_config(f"io.out_root={tmp_path / 'runs'}", *base[:2], "infer.drop=[weed]"),
            images=str(one_image),
        )
    with pytest.raises(SegloopError, match="infer.label_map names 'wheat'.*'weeds_model_b:build'"):
        run_infer(
            infer_config(
                f"io.out_root={tmp_path / 'runs'}", *base[:2], "infer.label_map.wheat=weed"
            ),
            images=str(one_image),
        )


def test_file_path_predictor_and_its_params(tmp_path, one_image):
    path = write_module(tmp_path, "weeds_model_c")
    spec = f"{path}:build"
    predictor = make_predictor(spec, None, torch.device("cpu"), {"weed_share": 0.3})
    assert predictor.name == spec and predictor.params.weed_share == 0.3
    with pytest.raises(SegloopError, match=r"(?s)predictor '.*weeds_model_c.py:build'.*weed_share"):
        make_predictor(spec, None, torch.device("cpu"), {"weed_share": "lots"})
    with pytest.raises(SegloopError, match="no file"):
        make_predictor(f"{tmp_path}/missing.py:build", None, torch.device("cpu"))


def test_entry_point_predictor_runs_through_the_infer_command(tmp_path, one_image, monkeypatch):
    """A distribution that declares `segloop.predictors` (a dist-info folder on sys.path, as
    `pip install` leaves it) is found by its entry point name."""
    site = tmp_path / "site"
    write_module(site, "weeds_plugin")
    dist = site / "segloop_weeds_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: segloop-weeds-plugin\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text("[segloop.predictors]\nweeds = weeds_plugin:build\n")
    monkeypatch.syspath_prepend(str(site))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        [
            "infer",
            "--images",
            str(one_image),
            "--out",
            str(out),
            "--predictor",
            "weeds",
            "-o",
            "infer.device=cpu",
            "-o",
            "infer.num_workers=0",
            "-o",
            "infer.predictor_params={weed_share: 0.7}",
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert LabelSet.load(out / "labels.json").names == ["background", "weed", "crop"]
    mask = load_mask(out / "masks" / "a.png")
    assert (mask[:, :16] == 1).all() and (mask[:, 32:] == 2).all()

    with pytest.raises(SegloopError) as error:
        make_predictor("weedz", None, torch.device("cpu"))
    message = str(error.value)
    assert "unknown predictor 'weedz'" in message and "exg" in message
    assert "entry points (segloop.predictors): weeds" in message and "my_pkg.my_model" in message


# ---------------------------------------------------------------- bad predictors


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("wrong-shape", r"returned \(2, 2, 32, 32\); expected probabilities of shape \(2, 3, 32"),
        ("one-label", "needs at least two labels"),
        ("no-info", "info is a NoneType, not a PredictorInfo"),
        ("raises", "failed on a batch of 2 tiles.*RuntimeError: CUDA out of memory"),
        ("build-fails", "failed to build: FileNotFoundError: weights.pt"),
    ],
)
def test_bad_predictor_gets_a_clear_error_naming_it(tmp_path, one_image, kind, expected):
    path = write_module(tmp_path, f"bad_{kind.replace('-', '_')}", kind)
    spec = f"{path}:build"
    with pytest.raises(SegloopError, match=f"predictor '{spec}'.*{expected}"):
        run_infer(
            infer_config(f"io.out_root={tmp_path / 'runs'}", f"infer.predictor={spec}"),
            images=str(one_image),
        )


def test_not_a_predictor_is_named(tmp_path, one_image):
    (tmp_path / "not_pred.py").write_text("def build():\n    return 'a model'\n")
    spec = f"{tmp_path / 'not_pred.py'}:build"
    with pytest.raises(SegloopError, match=f"predictor '{spec}' returned str, not a"):
        run_infer(
            infer_config(f"io.out_root={tmp_path / 'runs'}", f"infer.predictor={spec}"),
            images=str(one_image),
        )
    with pytest.raises(SegloopError, match="takes no params"):
        make_predictor(spec, None, torch.device("cpu"), {"x": 1})
