"""Class sets, the Cityscapes palette and the official labelId -> trainId table."""
from __future__ import annotations

import numpy as np
import pytest

from bisenet_ros.labels import (CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, LABEL_ID_TO_TRAIN_ID, class_index,
                                class_indices, cityscapes, default_palette, label_ids_to_train_ids, load_class_set,
                                train_ids_to_label_ids)


def test_cityscapes_classes_and_palette() -> None:
    classes = cityscapes()
    assert classes.num_classes == 19 and len(CITYSCAPES_CLASSES) == 19
    assert classes.names[0] == "road" and classes.names[13] == "car" and classes.names[18] == "bicycle"
    assert CITYSCAPES_PALETTE.shape == (19, 3) and CITYSCAPES_PALETTE.dtype == np.uint8
    assert tuple(classes.palette[0]) == (128, 64, 128)    # road
    assert tuple(classes.palette[10]) == (70, 130, 180)   # sky
    assert tuple(classes.palette[13]) == (0, 0, 142)      # car
    assert len({tuple(c) for c in classes.palette}) == 19  # all distinct


def test_label_id_to_train_id_official_table() -> None:
    # The 19 training classes are exactly these label ids, in train-id order.
    trained = sorted((t, lid) for lid, t in LABEL_ID_TO_TRAIN_ID.items() if t != 255)
    assert [lid for _, lid in trained] == [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    label_ids = np.array([[0, 7, 8, 9], [26, 29, 33, 34]], dtype=np.uint8)
    np.testing.assert_array_equal(label_ids_to_train_ids(label_ids), [[255, 0, 1, 255], [13, 255, 18, 255]])
    # int arrays with the licence plate (-1) and out-of-range values are ignored too
    np.testing.assert_array_equal(label_ids_to_train_ids(np.array([-1, 7, 300], dtype=np.int32)), [255, 0, 255])


def test_train_ids_round_trip() -> None:
    train = np.arange(19, dtype=np.uint8)
    np.testing.assert_array_equal(label_ids_to_train_ids(train_ids_to_label_ids(train)), train)
    assert train_ids_to_label_ids(np.array([255], dtype=np.uint8))[0] == 0


def test_class_lookup_and_luts() -> None:
    classes = cityscapes()
    assert classes.class_id("Road") == 0 and classes.class_id("13") == 13 and classes.class_id(18) == 18
    with pytest.raises(ValueError, match="expected one of: road, sidewalk"):
        classes.class_id("tarmac")
    with pytest.raises(ValueError, match="out of range"):
        classes.class_id(19)
    lut = classes.mask_lut(["road", "sidewalk"])
    assert lut[0] == lut[1] == 255 and lut[2:].sum() == 0
    bgr = classes.color_lut("bgr")
    assert bgr.shape == (256, 1, 3) and tuple(bgr[13, 0]) == (142, 0, 0) and tuple(bgr[255, 0]) == (0, 0, 0)


def test_custom_class_set_from_yaml(tmp_path) -> None:
    path = tmp_path / "classes.yaml"
    path.write_text("names: [ground, obstacle, sky]\npalette: [[1, 2, 3], [4, 5, 6], [7, 8, 9]]\n")
    classes = load_class_set(path, num_classes=3)
    assert classes.names == ("ground", "obstacle", "sky")
    np.testing.assert_array_equal(classes.palette, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    with pytest.raises(ValueError, match="3 classes but the model predicts num_classes=19"):
        load_class_set(path, num_classes=19)

    no_palette = tmp_path / "names.yaml"
    no_palette.write_text("names: [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, s, t, u, v]\n")
    classes = load_class_set(no_palette)
    assert classes.num_classes == 22 and len({tuple(c) for c in classes.palette}) == 22

    bad = tmp_path / "bad.yaml"
    bad.write_text("names: [a, b]\npalette: [[1, 2, 3]]\n")
    with pytest.raises(ValueError, match=r"palette has shape \(1, 3\), expected \(2, 3\)"):
        load_class_set(bad)
    bad.write_text("palette: [[1, 2, 3]]\n")
    with pytest.raises(ValueError, match="'names'"):
        load_class_set(bad)
    with pytest.raises(ValueError, match="expected 'cityscapes' or a YAML file"):
        load_class_set("kitti")


def test_default_palette_is_distinct_and_starts_with_cityscapes() -> None:
    palette = default_palette(60)
    assert palette.shape == (60, 3) and len({tuple(c) for c in palette}) == 60
    np.testing.assert_array_equal(palette[:19], CITYSCAPES_PALETTE)


def test_one_class_name_rule_case_insensitive_with_the_closest_name() -> None:
    names = ["Road", "Sidewalk", "Traffic Light", "Sky"]
    # any spelling of a name, spaces trimmed, or an id
    assert class_indices(["road", " SIDEWALK ", "traffic light", "3", 0], names) == [0, 1, 2, 3, 0]
    # names are shown as the file spells them, with the closest one
    with pytest.raises(ValueError) as caught:
        class_index("sidewlk", names, source="class set 'camvid.yaml'")
    message = str(caught.value)
    assert "unknown class 'sidewlk' in class set 'camvid.yaml'" in message
    assert "did you mean 'Sidewalk'?" in message and "Road, Sidewalk, Traffic Light, Sky" in message
    with pytest.raises(ValueError) as caught:
        class_index("zebra", names)
    assert "did you mean" not in str(caught.value)   # nothing close: the list only
    with pytest.raises(ValueError, match=r"class id 4 is out of range for the model \(0..3\)"):
        class_index(4, names)
    # the engine's drivable table follows the same rule
    classes = cityscapes()
    assert classes.mask_lut(["ROAD", "Sidewalk"])[[0, 1]].tolist() == [255, 255]
    with pytest.raises(ValueError, match="did you mean 'sidewalk'"):
        classes.mask_lut(["sidewalks"])
