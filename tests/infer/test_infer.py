"""`segloop infer`: tiling/blending, outputs, COCO, bad inputs, resume, S3, CLI.

Models are tiny (Unet-resnet18, 8-channel decoder, random weights) or simple pixel-wise
predictors whose exact answer is known, so that seams and stitching errors are visible.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from config_helpers import infer_config  # tests/ is on sys.path
from PIL import Image
from pycocotools.coco import COCO

from components.core import images as imgs
from components.core.checkpoint import load_checkpoint, save_checkpoint
from components.core.errors import SegloopError
from components.core.inference import TileEngine, predict_image
from components.core.labels import Label, LabelSet
from components.core.model import ModelSpec, build_from_spec
from components.core.predictor import Predictor, PredictorInfo, SmpPredictor
from components.core.tiling import make_grid, pad_image

LABELS = [
    Label(name="background", id=0, color="#000000"),
    Label(name="crop", id=1, color="#00ff00"),
    Label(name="weed", id=2, color="#ff0000"),
]


# ---------------------------------------------------------------- helpers


class PixelPredictor(Predictor):
    """Per-pixel softmax of a fixed 1x1 linear map: each pixel's answer ignores its tile."""

    name = "pixel"

    def __init__(self, tile: int = 64):
        self._info = PredictorInfo(
            labels=LabelSet(labels=LABELS),
            tile_size=tile,
            pad_divisor=32,
            mean=(0, 0, 0),
            std=(1, 1, 1),
        )
        # background when dark, crop when green dominates, weed when red dominates
        self.weight = torch.tensor([[-4.0, -4.0, -4.0], [-6.0, 8.0, -6.0], [8.0, -6.0, -6.0]])
        self.bias = torch.tensor([2.0, 0.0, 0.0])

    @property
    def info(self) -> PredictorInfo:
        return self._info

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        logits = torch.einsum("kc,nchw->nkhw", self.weight, batch.float()) + self.bias.view(
            1, -1, 1, 1
        )
        return torch.softmax(logits, dim=1)


class ConstantPredictor(PixelPredictor):
    name = "constant"

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        n, _, h, w = batch.shape
        return torch.tensor([0.2, 0.7, 0.1]).view(1, 3, 1, 1).expand(n, 3, h, w).clone()


class WrongShapePredictor(PixelPredictor):
    name = "wrong-shape"

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        return super().predict(batch)[:, :2]


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Dark soil with a few green and red blobs (known classes for PixelPredictor)."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 20, dtype=np.uint8)
    for color in ((30, 220, 30), (230, 30, 30), (30, 220, 30)):
        y, x = rng.integers(0, h - 10), rng.integers(0, w - 10)
        img[y : y + rng.integers(5, h // 3), x : x + rng.integers(5, w // 3)] = color
    return img


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    spec = ModelSpec(
        arch="Unet",
        encoder_name="resnet18",
        classes=3,
        labels=LABELS,
        model_kwargs={"decoder_channels": [8, 8, 8, 8, 8]},
        tile_size=64,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    save_checkpoint(build_from_spec(spec).eval(), spec, folder)
    return folder


def save(path, array, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return str(path)


# ---------------------------------------------------------------- tiling and blending


def test_tiled_equals_untiled_when_the_image_fits_one_tile(ckpt):
    model, spec = load_checkpoint(ckpt)
    predictor = SmpPredictor(model, spec)
    engine = TileEngine(predictor, torch.device("cpu"), tile_size=64, batch_size=3)
    image = scene(50, 60)
    tiled = predict_image(engine, image)

    grid = make_grid(50, 60, 64, 0.25, 32)
    padded = pad_image(image, grid)  # 64 x 64, reflection
    x = torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        untiled = torch.softmax(model(x), dim=1)[0, :, :50, :60]
    assert tiled.shape == (3, 50, 60)
    assert torch.allclose(tiled, untiled, atol=1e-4)


@pytest.mark.parametrize("window", ["hann", "gaussian"])
def test_constant_model_stitched_over_many_tiles_is_seamless(window):
    engine = TileEngine(
        ConstantPredictor(), torch.device("cpu"), tile_size=64, overlap=0.3, window=window
    )
    probs = predict_image(engine, scene(200, 333))
    assert engine.tiles_run > 20
    expected = torch.tensor([0.2, 0.7, 0.1]).view(3, 1, 1).expand_as(probs)
    assert torch.allclose(probs, expected, atol=1e-5)
    assert bool((probs.argmax(0) == 1).all())


def test_pixelwise_model_has_no_seams_and_batches_across_images():
    predictor = PixelPredictor()
    engine = TileEngine(predictor, torch.device("cpu"), tile_size=64, overlap=0.25, batch_size=5)
    a, b = scene(150, 210, seed=1), scene(97, 130, seed=2)
    got = {}
    for name, image in (("a", a), ("b", b)):
        out = torch.zeros(3, *image.shape[:2])
        engine.submit(
            image, lambda top, p, out=out: out[:, top : top + p.shape[1]].copy_(p), lambda: None
        )
        got[name] = out
    engine.flush()
    for name, image in (("a", a), ("b", b)):
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        direct = predictor.predict(x)[0]
        assert torch.allclose(got[name], direct, atol=1e-5), name


def test_wrong_predictor_output_is_named():
    engine = TileEngine(WrongShapePredictor(), torch.device("cpu"), tile_size=64)
    with pytest.raises(SegloopError, match=r"predictor 'wrong-shape' returned \(1, 2, 64, 64\)"):
        predict_image(engine, scene(64, 64))


# ---------------------------------------------------------------- the stage


def test_outputs_coco_and_uncertainty_on_cpu_amp_with_workers(tmp_path):
    from components.infer.stage import run_infer

    folder = tmp_path / "imgs"
    for i, (h, w) in enumerate([(96, 130), (140, 90), (64, 64)]):
        save(folder / f"img{i}.png", scene(h, w, seed=i))
    cfg = infer_config(
        num_workers=1, amp="bf16", overlays=True, min_area=4, tile_size=64, batch_size=3
    )
    out = tmp_path / "out"
    metrics = run_infer(cfg, images=str(folder), out=str(out), predictor=PixelPredictor())
    assert metrics["ok"] == 3 and metrics["failed"] == 0 and metrics["amp"] == "bfloat16"
    assert metrics["mp_per_s"] > 0 and metrics["annotations"] > 0

    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["record_id"] for r in rows} == {"img0", "img1", "img2"}
    for r in rows:
        assert r["status"] == "ok" and r["mask"] == f"masks/{r['record_id']}.png"
        assert set(r["uncertainty"]) == {"entropy", "margin", "uncertain_share"}
        assert sum(r["pixels"].values()) == r["width"] * r["height"]
        assert (out / r["overlay"]).is_file()

    coco = COCO(str(out / "predictions.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["crop", "weed"]
    for img in coco.loadImgs(coco.getImgIds()):
        mask = imgs.load_mask(out / "masks" / f"{img['record_id']}.png")
        assert mask.shape == (img["height"], img["width"])
        rebuilt = np.zeros_like(mask)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            bitmap = coco.annToMask(ann).astype(bool)
            assert not rebuilt[bitmap].any()  # regions do not overlap
            assert ann["area"] == int(bitmap.sum()) and 0 < ann["score"] <= 1
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(bitmap)
            assert (x, y, w, h) == (xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1)
            rebuilt[bitmap] = ann["category_id"]
        np.testing.assert_array_equal(rebuilt, mask)
        # the scene's colours come back: PixelPredictor labels green crop, red weed
        src = np.asarray(Image.open(folder / f"{img['record_id']}.png"))
        assert (mask[src[..., 1] > 200] == 1).all() and (mask[src[..., 0] > 200] == 2).all()


def _jpeg_with_orientation(array: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def test_bad_inputs_are_converted_or_recorded_and_counted(tmp_path, ckpt):
    from components.infer.stage import run_infer

    d = tmp_path / "in"
    rgb = scene(70, 100)
    files = {
        "rgba": save(d / "rgba.png", np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])),
        "gray": save(d / "gray.png", rgb[..., 1]),
        "palette": str(d / "palette.png"),
        "sixteen": str(d / "sixteen.png"),
        "exif": str(d / "exif.jpg"),
        "truncated": str(d / "truncated.jpg"),
        "corrupt": str(d / "corrupt.png"),
        "missing": str(d / "missing.jpg"),
    }
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(files["palette"])
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(files["sixteen"])
    (d / "exif.jpg").write_bytes(_jpeg_with_orientation(rgb, 6))  # stored 70x100, shown 100x70
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    records = tmp_path / "records.jsonl"
    records.write_text(
        "".join(
            json.dumps({"image_id": k, "image_uri": v, "site": "x"}) + "\n"
            for k, v in files.items()
        )
    )

    out = tmp_path / "out"
    with pytest.raises(SegloopError) as err:
        run_infer(infer_config(model=str(ckpt), max_failures=2), records=str(records), out=str(out))
    message = str(err.value)
    assert "3 items failed (max_failures=2)" in message
    for bad in ("truncated", "corrupt", "missing"):
        assert f"{bad}: " in message and files[bad] in message

    rows = {
        json.loads(x)["record_id"]: json.loads(x)
        for x in (out / "manifest.jsonl").read_text().splitlines()
    }
    for good in ("rgba", "gray", "palette", "sixteen", "exif"):
        assert rows[good]["status"] == "ok", rows[good]
    assert (rows["exif"]["width"], rows["exif"]["height"]) == (70, 100)
    assert imgs.load_mask(out / "masks" / "exif.png").shape == (100, 70)
    assert rows["missing"]["reason"].endswith("no such file or object")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["failed"] == 3 and metrics["ok"] == 5

    # within the allowed failures the stage succeeds, and only the failed ones are retried;
    # a query output folder works as well as its records.jsonl
    again = run_infer(
        infer_config(model=str(ckpt), max_failures=3), records=str(tmp_path), out=str(out)
    )
    assert again["skipped_done"] == 5 and again["processed"] == 3 and again["failed"] == 3


def test_resume_skips_done_images_and_overwrite_redoes_them(tmp_path):
    from components.infer.stage import run_infer

    folder = tmp_path / "imgs"
    for i in range(3):
        save(folder / "sub" / f"p{i}.png", scene(64, 80, seed=i))
    out = tmp_path / "out"
    first = run_infer(infer_config(), images=str(folder), out=str(out), predictor=PixelPredictor())
    assert first["processed"] == 3 and (out / "masks" / "sub" / "p0.png").is_file()
    stamp = (out / "masks" / "sub" / "p0.png").stat().st_mtime_ns
    (out / "masks" / "sub" / "p2.png").unlink()
    lines = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text("\n".join(lines[:2]) + "\n")  # as if interrupted

    second = run_infer(infer_config(), images=str(folder), out=str(out), predictor=PixelPredictor())
    assert second["skipped_done"] == 2 and second["processed"] == 1 and second["ok"] == 3
    assert (out / "masks" / "sub" / "p2.png").is_file()
    assert (out / "masks" / "sub" / "p0.png").stat().st_mtime_ns == stamp
    assert len(json.loads((out / "predictions.json").read_text())["images"]) == 3

    third = run_infer(
        infer_config(overwrite=True), images=str(folder), out=str(out), predictor=PixelPredictor()
    )
    assert third["processed"] == 3 and third["skipped_done"] == 0


def test_unreadable_image_messages_say_what_the_file_is():
    def reason(data: bytes) -> str:
        with pytest.raises(SegloopError) as err:
            imgs.decode_rgb(data, source="field/a.jpg")
        return str(err.value)

    assert reason(b"") == "field/a.jpg: empty file (0 bytes); replace or remove the file"
    assert reason(b"<html>") == (
        "field/a.jpg: not an image (6 bytes of text; no PNG, JPEG, TIFF, GIF, BMP or WebP "
        "signature); replace or remove the file"
    )
    # Never the file's content: it may be /etc/passwd or a page with a token in it.
    for content in (b"root:x:0:0:root:/root:/bin/bash\n", b"<html>token=s3cr3t</html>"):
        assert content.decode()[:5] not in reason(content)
    binary = reason(b"it's\\\x00\xff\n" + b"x" * 40)
    assert "not an image (48 bytes; no PNG" in binary and "it's" not in binary
    assert "damaged or unsupported PNG file" in reason(b"\x89PNG\r\n\x1a\n not really a png")
    buf = io.BytesIO()
    Image.fromarray(scene(40, 40)).save(buf, format="JPEG")
    assert "field/a.jpg: damaged JPEG file (" in reason(buf.getvalue()[:300])
    for data in (b"", b"<html>", b"\x89PNG\r\n\x1a\nxx", buf.getvalue()[:300]):
        assert "BytesIO" not in reason(data) and " at 0x" not in reason(data)


def test_manifest_retain_keeps_the_current_input_in_its_order(tmp_path):
    from components.core.artifacts import Manifest

    m = Manifest(tmp_path)
    for rid, status in (("a", "failed"), ("b", "ok"), ("c", "failed"), ("a", "ok")):
        m.add({"record_id": rid, "status": status})
    assert [e["record_id"] for e in m.retain(["b", "a", "zz"])] == ["c"]
    m.compact(keep=["b", "a"])
    rows = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert [(r["record_id"], r["status"]) for r in rows] == [("b", "ok"), ("a", "ok")]
    assert Manifest(tmp_path).failed() == []


def test_rerun_after_removing_and_fixing_bad_files_agrees_with_metrics(tmp_path, ckpt, caplog):
    from components.infer.stage import run_infer, throughput
    from components.upload_cvat.stage import read_items
    from pipelines.cli.infer import infer_command

    folder = tmp_path / "imgs"
    for i in range(3):
        save(folder / f"p{i}.png", scene(64, 80, seed=i))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "sub" / "page.jpg").parent.mkdir()
    (folder / "sub" / "page.jpg").write_bytes(b"<html><body>404</body></html>")
    (folder / "html.png").write_bytes(b"<html>")
    out = tmp_path / "out"
    cfg = infer_config(model=str(ckpt))
    with pytest.raises(SegloopError) as err:
        run_infer(cfg, images=str(folder), out=str(out))
    message = str(err.value)  # names the record and the file, says what is wrong
    assert f"empty: {folder / 'empty.jpg'}: empty file (0 bytes)" in message
    assert f"html: {folder / 'html.png'}: not an image (6 bytes of text; no PNG" in message
    assert f"sub/page: {folder / 'sub' / 'page.jpg'}: not an image (29 bytes of text" in message
    assert "<html>" not in message
    assert "BytesIO" not in message
    first = json.loads((out / "metrics.json").read_text())
    assert (first["ok"], first["failed"]) == (3, 3)

    # The bad files are removed or fixed; the re-run resumes.
    (folder / "empty.jpg").unlink()
    (folder / "sub" / "page.jpg").unlink()
    save(folder / "html.png", scene(64, 80, seed=7), format="PNG")
    again = run_infer(cfg, images=str(folder), out=str(out))
    assert (again["processed"], again["skipped_done"], again["ok"], again["failed"]) == (1, 3, 4, 0)
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["record_id"] for r in rows) == ["html", "p0", "p1", "p2"]
    assert all(r["status"] == "ok" for r in rows) and len(rows) == again["images"]
    assert json.loads((out / "metrics.json").read_text())["failed"] == 0
    # ... so the stages that read the manifest next see no stale failures either.
    items, failed_upstream = read_items(out)
    assert len(items) == 4 and failed_upstream == []

    # Everything already done: the summary says so instead of "0.00 MP/s".
    caplog.set_level("INFO", logger="segloop.infer")
    result = CliRunner().invoke(
        infer_command,
        ["--images", str(folder), "--model", str(ckpt), "--out", str(out), "--device", "cpu",
         "--num-workers", "0"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "nothing to process: 4 images already done" in result.output
    assert "MP/s" not in result.output
    assert "nothing to process: 4 images already done" in caplog.text
    assert "0.00 MP/s" not in caplog.text

    # Every image failing is not a speed either.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.jpg").write_bytes(b"<html>")
    m = run_infer(
        infer_config(model=str(ckpt), max_failures=2), images=str(bad), out=str(tmp_path / "o2")
    )
    assert throughput(m) == "nothing segmented: 2 images processed, none succeeded"
    assert throughput(again).endswith("MP/s on cpu") and again["mp_per_s"] > 0


def test_thresholds_and_settings_errors(tmp_path):
    from components.infer.stage import run_infer

    save(tmp_path / "imgs" / "a.png", scene(64, 64))
    with pytest.raises(SegloopError, match=r"unknown classes \['tree'\]"):
        run_infer(
            infer_config(threshold={"tree": 0.5}),
            images=str(tmp_path / "imgs"),
            out=str(tmp_path / "o"),
            predictor=PixelPredictor(),
        )
    with pytest.raises(SegloopError, match="exactly one input"):
        run_infer(infer_config(), out=str(tmp_path / "o"), predictor=PixelPredictor())
    with pytest.raises(SegloopError, match="needs a model"):
        run_infer(infer_config(), images=str(tmp_path / "imgs"), out=str(tmp_path / "o"))
    # a threshold of 1.0 can never be reached: everything is background
    m = run_infer(
        infer_config(threshold=1.0),
        images=str(tmp_path / "imgs"),
        out=str(tmp_path / "t"),
        predictor=PixelPredictor(),
    )
    assert m["annotations"] == 0
    assert not imgs.load_mask(tmp_path / "t" / "masks" / "a.png").any()


def test_cli_with_s3_images_model_and_output(s3, tmp_path, ckpt):
    from components.core import storage
    from pipelines.cli.infer import infer_command

    for i in range(2):
        buf = io.BytesIO()
        Image.fromarray(scene(64, 96, seed=i)).save(buf, format="PNG")
        storage.write_bytes(f"s3://{s3.bucket}/infer-in/im{i}.png", buf.getvalue())
    model, spec = load_checkpoint(ckpt)
    save_checkpoint(model, spec, f"s3://{s3.bucket}/models/tiny")
    out = f"s3://{s3.bucket}/infer-out"
    # The command is invoked directly (not through the `segloop` group) to keep the test
    # independent of the other commands' modules.
    result = CliRunner().invoke(
        infer_command,
        [
            "--images",
            f"s3://{s3.bucket}/infer-in",
            "--model",
            f"s3://{s3.bucket}/models/tiny",
            "--out",
            out,
            "--device",
            "cpu",
            "--num-workers",
            "0",
            "--overlays",
            "-o",
            "infer.batch_size=2",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "infer: 2 ok, 0 failed" in result.output
    listed = storage.list_files(out)
    for name in (
        "masks/im0.png",
        "masks/im1.png",
        "overlays/im0.jpg",
        "predictions.json",
        "manifest.jsonl",
        "metrics.json",
        "cfg.yaml",
        "model.json",
        "labels.json",
    ):
        assert f"{out}/{name}" in listed, name

    # a record whose S3 object is missing is recorded as failed, within max_failures
    from components.infer.stage import run_infer

    records = tmp_path / "records.jsonl"
    rows = [
        {"image_id": "ok", "image_uri": f"s3://{s3.bucket}/infer-in/im0.png"},
        {"image_id": "gone", "image_uri": f"s3://{s3.bucket}/infer-in/gone.png"},
    ]
    records.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = run_infer(
        infer_config(model=f"s3://{s3.bucket}/models/tiny", max_failures=1),
        records=str(records),
        out=str(tmp_path / "o"),
    )
    assert (m["ok"], m["failed"]) == (1, 1)
    assert (
        m["failures"][0]["reason"] == f"s3://{s3.bucket}/infer-in/gone.png: no such file or object"
    )


@pytest.mark.parametrize(
    "arch,kwargs",
    [
        ("Unet", {"decoder_channels": [8, 8, 8, 8, 8]}),
        ("DeepLabV3Plus", {"decoder_channels": 16}),
        ("Segformer", {"decoder_segmentation_channels": 16}),
    ],
)
def test_smp_predictor_folded_network_matches_the_checkpoint_model(arch, kwargs):
    labels = LABELS[:2]
    spec = ModelSpec(
        arch=arch,
        encoder_name="resnet18",
        classes=1,
        labels=labels,
        model_kwargs=kwargs,
        tile_size=64,
    )
    torch.manual_seed(0)
    model = build_from_spec(spec).eval()
    predictor = SmpPredictor(model, spec).to(torch.device("cpu"))
    x = torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        probs = predictor.predict(x)
        fg = torch.sigmoid(model(x.contiguous()))
    assert probs.shape == (2, 2, 64, 64)  # binary model: background + foreground
    assert torch.allclose(probs[:, 1:], fg, atol=1e-4)
    assert torch.allclose(probs.sum(1), torch.ones(2, 64, 64))
