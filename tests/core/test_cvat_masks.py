"""Mask codecs: exact round trips through CVAT masks, polygons (with holes) and COCO RLE.

The CVAT-side decoder of the test server (written the way CVAT's server decodes) is used as
a check of what `cvat_sdk.masks.encode_mask` produces; so are a decoder written here from
CVAT's documented RLE format, `cvat_sdk.masks.encode_mask` itself (the points must be its
canonical encoding of the decoded pixels), hand-worked literal points, and for COCO RLE
pycocotools (`decode`, `area`, `toBbox`) and a decoder of the compressed counts written here.
"""

from __future__ import annotations

import numpy as np
import pytest
from cvat_sdk.masks import encode_mask
from cvat_server.exports import decode_cvat_mask, rasterize_polygon
from pycocotools import mask as mask_utils
from scipy import ndimage

from components.core.masks import (
    coco_annotation,
    coco_rle_encode,
    coco_segmentation_to_bitmap,
    mask_to_cvat_masks,
    mask_to_polygons,
    shapes_to_mask,
)

# pycocotools warns on every decode under numpy 2 (harmless); keep the output readable.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def random_masks(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = (int(v) for v in rng.integers(4, 40, 2))
        mask = rng.integers(0, int(rng.integers(2, 5)), (h, w)).astype(np.uint8)
        if i % 2:  # smoother blobs with holes as well as salt-and-pepper noise
            mask = ndimage.median_filter(mask, size=3).astype(np.uint8)
        yield mask


def cvat_rle_decode(points: list[float], height: int, width: int) -> np.ndarray:
    """CVAT mask points as documented: run lengths alternating 0/1 (zeros first), row-major
    over the inclusive bbox [x1, y1, x2, y2] given as the last 4 numbers."""
    *runs, x1, y1, x2, y2 = (int(p) for p in points)
    assert all(float(p).is_integer() for p in points)
    assert 0 <= x1 <= x2 < width and 0 <= y1 <= y2 < height
    bw = x2 - x1 + 1
    assert sum(runs) == bw * (y2 - y1 + 1)
    out = np.zeros((height, width), dtype=bool)
    pos, value = 0, False
    for run in runs:
        for i in range(pos, pos + run):
            out[y1 + i // bw, x1 + i % bw] = value
        pos, value = pos + run, not value
    return out


def coco_counts_decode(counts: str) -> list[int]:
    """COCO's compressed RLE string (pycocotools' rleFrString): 5-bit groups in chars from
    '0', 0x20 = more follows, sign in 0x10 of the last group; counts after the 2nd are deltas."""
    out: list[int] = []
    pos = 0
    while pos < len(counts):
        value = shift = 0
        while True:
            c = ord(counts[pos]) - 48
            pos += 1
            value |= (c & 0x1F) << shift
            shift += 5
            if not c & 0x20:
                if c & 0x10:
                    value -= 1 << shift
                break
        out.append(value + (out[-2] if len(out) > 2 else 0))
    return out


def coco_counts_to_bitmap(counts: list[int], height: int, width: int) -> np.ndarray:
    """Uncompressed COCO counts: alternating 0/1 runs (zeros first), column-major."""
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    assert flat.size == height * width
    return flat.reshape((width, height)).T


def test_cvat_mask_points_by_hand():
    mask = np.zeros((6, 6), dtype=np.uint8)
    mask[0, 0:4] = 1  # an L of class 1 ...
    mask[1:4, 0] = 1
    mask[2, 2] = 1  # ... with a separate class-1 pixel inside its bbox (not 8-connected)
    mask[2:5, 5] = 2  # class 2 on the last column
    shapes = mask_to_cvat_masks(mask)
    assert all(s.type == "mask" and s.z_order == 0 for s in shapes)
    assert sorted((s.class_id, s.points) for s in shapes) == sorted(
        [
            # bbox x 0-3, y 0-3, rows 1111|1000|1000|1000 (the lone pixel is another shape):
            # 0 zeros, 5 ones, 3 zeros, 1 one, 3 zeros, 1 one, 3 zeros = 16 = 4 * 4
            (1, [0, 5, 3, 1, 3, 1, 3, 0, 0, 3, 3]),
            (1, [0, 1, 2, 2, 2, 2]),  # the lone pixel: one run of 1 in the 1x1 bbox at (2, 2)
            (2, [0, 3, 5, 2, 5, 4]),  # a column of 3 at x 5, y 2-4: bbox 1 wide, 3 high
        ]
    )
    for s in shapes:
        assert (cvat_rle_decode(s.points, 6, 6) == decode_cvat_mask(s.points, 6, 6)).all()
    assert (shapes_to_mask(shapes, 6, 6) == mask).all()


def test_cvat_masks_against_independent_decoder_and_sdk_encoder():
    for mask in random_masks(60, seed=2):
        h, w = mask.shape
        painted = np.zeros_like(mask)
        for s in mask_to_cvat_masks(mask):
            bitmap = cvat_rle_decode(s.points, h, w)
            # The points are exactly what CVAT's SDK encoder makes of those pixels (tight bbox).
            assert s.points == encode_mask(bitmap)
            # Each shape is one whole 8-connected region of its class and nothing else.
            assert (mask[bitmap] == s.class_id).all()
            assert ndimage.label(bitmap, structure=np.ones((3, 3)))[1] == 1
            assert not (painted[bitmap]).any()  # shapes never overlap
            painted[bitmap] = s.class_id
        assert (painted == mask).all()


def test_cvat_masks_round_trip_exactly_including_last_row_and_column():
    for mask in random_masks(60):
        h, w = mask.shape
        shapes = mask_to_cvat_masks(mask)
        assert (shapes_to_mask(shapes, h, w) == mask).all()
        # The server side decodes them the way CVAT does, to the same pixels.
        server = np.zeros_like(mask)
        for s in shapes:
            server[decode_cvat_mask(s.points, h, w)] = s.class_id
        assert (server == mask).all()
    edge = np.zeros((5, 7), dtype=np.uint8)
    edge[-1, :] = 1
    edge[:, -1] = 2
    (shape_1,) = [s for s in mask_to_cvat_masks(edge) if s.class_id == 1]
    assert shape_1.points[-4:] == [0, 4, 5, 4]  # inclusive bbox: x1, y1, x2, y2
    assert (shapes_to_mask(mask_to_cvat_masks(edge), 5, 7) == edge).all()


def test_one_mask_shape_per_class_and_connected_region():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[1:3, 1:3] = 1
    mask[6:9, 6:9] = 1
    mask[1:3, 6:9] = 2
    shapes = mask_to_cvat_masks(mask)
    assert sorted(s.class_id for s in shapes) == [1, 1, 2]
    assert all(s.type == "mask" for s in shapes)


def test_polygons_reproduce_masks_with_holes_and_nested_classes():
    for mask in random_masks(200, seed=1):
        h, w = mask.shape
        shapes = mask_to_polygons(mask)
        assert (shapes_to_mask(shapes, h, w) == mask).all()
        # Rasterized as CVAT's exporter does (pycocotools), in z_order: the same.
        server = np.zeros_like(mask)
        for s in sorted(shapes, key=lambda s: s.z_order):
            server[rasterize_polygon(s.points, h, w)] = s.class_id
        assert (server == mask).all()


def test_polygon_hole_is_drawn_above_its_container():
    mask = np.zeros((12, 12), dtype=np.uint8)
    mask[1:11, 1:11] = 1
    mask[4:8, 4:8] = 0  # a background hole
    mask[5:7, 5:7] = 2  # with an island of another class inside
    shapes = mask_to_polygons(mask)
    by_class = {s.class_id: s for s in shapes}
    assert set(by_class) == {0, 1, 2}
    assert by_class[1].z_order < by_class[0].z_order < by_class[2].z_order
    assert (shapes_to_mask(shapes, 12, 12) == mask).all()


@pytest.mark.parametrize("kind", ["compressed", "uncompressed", "polygon"])
def test_coco_segmentations_decode(kind):
    mask = np.zeros((9, 13), dtype=bool)
    mask[2:7, 3:11] = True
    if kind == "compressed":
        seg = coco_rle_encode(mask)
        assert isinstance(seg["counts"], str)
    elif kind == "uncompressed":
        flat = mask.ravel(order="F").astype(int)
        change = np.flatnonzero(np.diff(flat)) + 1
        counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
        seg = {"size": [9, 13], "counts": counts}
    else:
        seg = [[3, 2, 11, 2, 11, 7, 3, 7]]
    assert (coco_segmentation_to_bitmap(seg, 9, 13) == mask).all()


def test_coco_rle_of_the_wrong_size_is_refused():
    seg = coco_rle_encode(np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="differs from the image size"):
        coco_segmentation_to_bitmap(seg, 5, 4)


def test_coco_rle_against_pycocotools_and_a_hand_decoder():
    for i, mask in enumerate(random_masks(40, seed=3)):
        h, w = mask.shape
        bitmap = mask == (i % 2)  # some are empty or full
        seg = coco_rle_encode(bitmap)
        assert seg["size"] == [h, w]
        rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
        assert (mask_utils.decode(rle).astype(bool) == bitmap).all()
        assert int(mask_utils.area(rle)) == bitmap.sum()
        counts = coco_counts_decode(seg["counts"])
        assert sum(counts) == h * w
        assert (coco_counts_to_bitmap(counts, h, w) == bitmap).all()
        assert (coco_segmentation_to_bitmap(seg, h, w) == bitmap).all()


def test_coco_rle_and_annotation_by_hand():
    mask = np.zeros((3, 4), dtype=bool)
    mask[1:3, 1] = True
    mask[0, 3] = True
    # Column-major: column 0 is 3 zeros, then column 1 is 0 1 1, column 2 is 0 0 0, column 3
    # is 1 0 0: runs 4 zeros, 2 ones, 3 zeros, 1 one, 2 zeros (4+2+3+1+2 = 12 = 3 * 4).
    seg = coco_rle_encode(mask)
    assert coco_counts_decode(seg["counts"]) == [4, 2, 3, 1, 2]
    ann = coco_annotation(7, 3, 2, mask)
    assert ann["area"] == 3.0  # 2 + 1 pixels
    assert ann["bbox"] == [1.0, 0.0, 3.0, 3.0]  # x 1-3, y 0-2: x, y, width, height
    rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
    assert mask_utils.toBbox(rle).tolist() == ann["bbox"]
    assert (ann["id"], ann["image_id"], ann["category_id"], ann["iscrowd"]) == (7, 3, 2, 0)
