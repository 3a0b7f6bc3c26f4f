"""Mask codecs: exact round trips through CVAT masks, polygons (with holes) and COCO RLE.

The CVAT-side decoder of the test server (written the way CVAT's server decodes) is used as
an independent check of what `cvat_sdk.masks.encode_mask` produces.
"""

from __future__ import annotations

import numpy as np
import pytest
from cvat_server.exports import decode_cvat_mask, rasterize_polygon
from scipy import ndimage

from components.core.masks import (
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
