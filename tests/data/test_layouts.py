"""`enet preprocess` on every layout it reads: Cityscapes, VOC (and CVAT's export of it),
plain folders, each made from the real CamVid sample (tests/data/layout_fixtures.py), with
the same pixels through two layouts giving the same shards."""

import json
import shutil

import numpy as np
import pytest
from layout_fixtures import (
    CAMVID_TO_CITYSCAPES_ID,
    CAMVID_TO_VOC,
    camvid_index_to,
    cityscapes_record_names,
    make_cityscapes,
    make_folders,
    make_voc,
    remap,
    write_camvid_classes_csv,
)
from PIL import Image

from enet_cli.core.errors import ConfigError, DataError
from enet_cli.data.classes import read_classes_file
from enet_cli.data.layouts.camvid import CAMVID11
from enet_cli.data.layouts.cityscapes import LABELS, train_classes
from enet_cli.data.manifest import load_manifest
from enet_testing import (
    FIXTURES,
    invoke,
    nothing_written,
    paint_unknown_colour,
    preprocess_to,
    read_records,
    shrink_image,
)

SIZE = "96x128"  # small: these tests compare pixels, not train


@pytest.fixture(scope="module")
def segnet_small(tmp_path_factory):
    """The SegNet sample through its own layout: what every other layout must equal."""
    out = tmp_path_factory.mktemp("segnet-small") / "data"
    preprocess_to(FIXTURES / "camvid-segnet-mini", out, image_size=SIZE, workers=1)
    return {split: read_records(out, split) for split in ("train", "val", "test")}


def assert_same_records(records, reference, label_table=None, names=None):
    """Every record equals the reference's (images exactly; labels through label_table)."""
    assert len(records) == len(reference)
    for name, (image, label) in records.items():
        ref_image, ref_label = reference[names[name] if names else name]
        np.testing.assert_array_equal(image, ref_image, err_msg=name)
        expected = ref_label if label_table is None else remap(ref_label, label_table)
        np.testing.assert_array_equal(label, expected, err_msg=name)


# ---------------------------------------------------------------------------------------
# Cityscapes
# ---------------------------------------------------------------------------------------
def test_the_label_table_is_cityscapesscripts_own():
    from cityscapesscripts.helpers.labels import labels  # a dev dependency

    fields = ("name", "id", "trainId", "category", "categoryId", "hasInstances", "ignoreInEval")
    theirs = [(*(getattr(label, f) for f in fields), tuple(label.color)) for label in labels]
    assert [tuple(label) for label in LABELS] == theirs
    names, _, values = train_classes()
    evaluated = sorted((x for x in labels if 0 <= x.trainId < 255), key=lambda x: x.trainId)
    assert names == [x.name for x in evaluated] and len(names) == 19
    assert values == {x.id: (x.trainId if x.trainId != 255 else 19) for x in labels if x.id >= 0}


def test_cityscapes_gives_the_19_train_ids_and_the_test_split_unlabeled(segnet_small, tmp_path):
    root = make_cityscapes(tmp_path / "cityscapes")
    manifest, layout, reports = preprocess_to(root, tmp_path / "out", image_size=SIZE, workers=2)
    assert layout.name == "cityscapes" and manifest.scheme == "cityscapes"
    assert manifest.num_classes == 19 and manifest.ignore_index == 19
    # Expectations from cityscapesscripts' own table (a dev dependency), not from ours.
    from cityscapesscripts.helpers.labels import labels

    evaluated = sorted((x for x in labels if 0 <= x.trainId < 255), key=lambda x: x.trainId)
    assert manifest.class_names == [x.name for x in evaluated]
    ids_to_train = {x.id: x.trainId if 0 <= x.trainId < 255 else 19 for x in labels}
    camvid_to_train = {
        i: ids_to_train[CAMVID_TO_CITYSCAPES_ID[name]] for i, (name, _) in enumerate(CAMVID11)
    }
    camvid_to_train[len(CAMVID11)] = 19
    record_names = cityscapes_record_names(root)
    for split in ("train", "val"):
        assert_same_records(
            read_records(tmp_path / "out", split), segnet_small[split], camvid_to_train,
            record_names,
        )  # fmt: skip
    assert manifest.splits["test"].labeled is False and manifest.splits["train"].labeled
    test = read_records(tmp_path / "out", "test")
    assert len(test) == 8 and all((label == 19).all() for _, label in test.values())
    assert [r.labeled for r in reports] == [True, True, False]
    with pytest.raises(DataError, match=r"the test split of .* has no labels .*train, val"):
        load_manifest(tmp_path / "out", splits=["test"])


def test_cityscapes_categories(segnet_small, tmp_path):
    root = make_cityscapes(tmp_path / "cityscapes")
    manifest, _, _ = preprocess_to(
        root, tmp_path / "out", image_size=SIZE, classes="cityscapes-categories", workers=1
    )
    # Expectations from cityscapesscripts' own table (a dev dependency), not from ours:
    # categories in categoryId order, void (categoryId 0) ignored.
    from cityscapesscripts.helpers.labels import labels

    named = sorted({(x.categoryId, x.category) for x in labels if x.categoryId > 0})
    assert manifest.class_names == [name for _, name in named]
    by_id = {label.id: label for label in labels}
    table = {}
    for i, (name, _) in enumerate(CAMVID11):
        table[i] = by_id[CAMVID_TO_CITYSCAPES_ID[name]].categoryId - 1
    table[len(CAMVID11)] = len(named)
    assert_same_records(
        read_records(tmp_path / "out", "val"), segnet_small["val"], table,
        cityscapes_record_names(root),
    )  # fmt: skip


def test_an_unlabeled_split_is_refused_by_evaluate_in_one_line(tmp_path):
    """Before any model is loaded (so the model path need not even exist)."""
    root = make_cityscapes(tmp_path / "cityscapes")
    preprocess_to(root, tmp_path / "out", image_size=SIZE, workers=1)
    model = str(tmp_path / "some-run")
    result = invoke("evaluate", model, str(tmp_path / "out"), "--split", "test")
    assert result.returncode == 3, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "the test split of" in lines[0] and "no labels" in lines[0]


# ---------------------------------------------------------------------------------------
# VOC and its labelling-tool exports
# ---------------------------------------------------------------------------------------
def test_voc_with_a_classes_file_equals_segnet_pixel_for_pixel(segnet_small, tmp_path):
    root = make_voc(tmp_path / "voc")
    classes = write_camvid_classes_csv(tmp_path / "classes.csv")
    manifest, layout, _ = preprocess_to(
        root, tmp_path / "out", image_size=SIZE, classes=str(classes), workers=2
    )
    assert layout.name == "voc" and manifest.class_names == [n for n, _ in CAMVID11]
    assert [tuple(c.color) for c in manifest.classes] == [c for _, c in CAMVID11]
    assert set(manifest.splits) == {"train", "val"}
    for split in ("train", "val"):
        assert_same_records(read_records(tmp_path / "out", split), segnet_small[split])


def test_cvat_rgb_masks_with_labelmap_equal_the_palette_masks(segnet_small, tmp_path):
    root = make_voc(tmp_path / "cvat", mask_mode="RGB")
    manifest, _, _ = preprocess_to(root, tmp_path / "out", image_size=SIZE, workers=1)
    assert manifest.scheme == "labelmap.txt" and manifest.class_names == [n for n, _ in CAMVID11]
    assert manifest.splits["train"].unknown_label_pixels == 0
    assert_same_records(read_records(tmp_path / "out", "val"), segnet_small["val"])


def test_voc_itself_has_its_21_classes_and_jpeg_images(segnet_small, tmp_path):
    root = make_voc(tmp_path / "voc", classes="voc", image_format="JPEG")
    manifest, _, _ = preprocess_to(root, tmp_path / "out", image_size=SIZE, workers=1)
    assert manifest.num_classes == 21 and manifest.class_names[15] == "person"
    assert tuple(manifest.classes[15].color) == (192, 128, 128)  # VOC's person
    assert tuple(manifest.void_color) == (224, 224, 192)
    table = camvid_index_to(CAMVID_TO_VOC, 0, 21)
    records = read_records(tmp_path / "out", "train")
    for name, (image, label) in records.items():
        ref_image, ref_label = segnet_small["train"][name]
        np.testing.assert_array_equal(label, remap(ref_label, table), err_msg=name)
        # JPEG is lossy: the same picture, not the same bytes
        assert np.abs(image.astype(int) - ref_image).mean() < 4


# ---------------------------------------------------------------------------------------
# Plain folders
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("nested", [False, True])
def test_folders_of_index_masks_equal_segnet(segnet_small, tmp_path, nested):
    root = make_folders(tmp_path / "mine", nested=nested)
    manifest, layout, _ = preprocess_to(root, tmp_path / "out", image_size=SIZE, workers=2)
    assert layout.name == "folders" and manifest.scheme == "mask values"
    assert manifest.class_names == [f"class {i}" for i in range(11)]
    assert len({tuple(c.color) for c in manifest.classes} | {tuple(manifest.void_color)}) == 12
    for split in ("train", "val", "test"):
        assert_same_records(read_records(tmp_path / "out", split), segnet_small[split])


def test_folders_without_splits_hold_out_a_seeded_val_fraction(segnet_small, tmp_path):
    root = make_folders(tmp_path / "mine", per_split=False)
    every = {**segnet_small["train"], **segnet_small["val"], **segnet_small["test"]}
    held = []
    for seed in (0, 0, 1):
        out = tmp_path / f"out{len(held)}"
        manifest, _, _ = preprocess_to(
            root, out, image_size=SIZE, val_fraction=0.25, split_seed=seed, workers=1
        )
        assert {s: i.records for s, i in manifest.splits.items()} == {"train": 30, "val": 10}
        val = read_records(out, "val")
        assert_same_records(val, {name: every[name] for name in val})
        held.append(sorted(val))
    assert held[0] == held[1] and held[0] != held[2]


def test_folders_with_a_binary_classes_file(tmp_path):
    """Road / not road, masks as 0 and 255, named by a name,value CSV."""
    road = [name for name, _ in CAMVID11].index("Road")
    table = {i: 255 if i == road else 0 for i in range(12)}
    table[11] = 7  # void painted as 7, made void by --ignore-index
    root = make_folders(tmp_path / "road", table=table, splits=("train", "val"))
    (tmp_path / "classes.csv").write_text("name,value\nnot road,0\nroad,255\n")
    manifest, _, _ = preprocess_to(
        root, tmp_path / "out", image_size=SIZE, classes=str(tmp_path / "classes.csv"),
        ignore_index=7, workers=1,
    )  # fmt: skip
    assert manifest.class_names == ["not road", "road"] and manifest.ignore_index == 2
    labels = np.concatenate(
        [lab.ravel() for _, lab in read_records(tmp_path / "out", "train").values()]
    )
    assert set(np.unique(labels)) == {0, 1, 2}
    share = manifest.train_pixel_histogram[1] / sum(manifest.train_pixel_histogram)
    assert 0.1 < share < 0.6, share  # CamVid's road: a quarter to a half of a frame


def test_folders_of_colour_masks_with_a_yaml_classes_file(segnet_small, tmp_path):
    root = make_folders(tmp_path / "mine", splits=("train", "val"))
    palette = np.array([c for _, c in CAMVID11] + [(0, 0, 0)] * 245, np.uint8)
    for mask in (root / "masks").rglob("*.png"):
        indices = np.asarray(Image.open(mask))
        Image.fromarray(palette[np.where(indices == 255, 11, indices)], "RGB").save(mask)
    yaml_file = tmp_path / "classes.yaml"
    yaml_file.write_text(
        "".join(f"- name: {n}\n  color: [{r}, {g}, {b}]\n" for n, (r, g, b) in CAMVID11)
        + "- name: void\n  color: [0, 0, 0]\n"
    )
    manifest, _, _ = preprocess_to(
        root, tmp_path / "out", image_size=SIZE, classes=str(yaml_file), workers=1
    )
    assert manifest.class_names == [n for n, _ in CAMVID11] and manifest.ignore_index == 11
    assert_same_records(read_records(tmp_path / "out", "val"), segnet_small["val"])


# ---------------------------------------------------------------------------------------
# Bad input, per layout: one line naming the file, nothing written
# ---------------------------------------------------------------------------------------
def _first(root, pattern):
    return sorted(root.rglob(pattern))[0]


BREAKAGE = {
    "cityscapes: missing label": (
        make_cityscapes,
        {},
        lambda r: _first(r / "gtFine" / "train", "*_labelIds.png").unlink(),
        r"no label for leftImg8bit/train/aachen/aachen_000000_.*\.png \(looked for gtFine/",
    ),
    "cityscapes: label of another size": (
        make_cityscapes,
        {},
        lambda r: shrink_image(_first(r / "gtFine" / "val", "*_labelIds.png")),
        r"_leftImg8bit\.png is 480x360 but its label .*_labelIds\.png is 240x180",
    ),
    "cityscapes: a training split without labels": (
        make_cityscapes,
        {},
        lambda r: shutil.rmtree(r / "gtFine" / "val"),
        r"leftImg8bit/val has no labels: .*gtFine/val does not exist",
    ),
    "cityscapes: unknown --classes": (
        make_cityscapes,
        {"classes": "camvid11"},
        lambda r: None,
        r"--classes: 'camvid11'; Cityscapes has cityscapes or cityscapes-categories",
    ),
    "voc: listed image missing": (
        make_voc,
        {},
        lambda r: _first(r / "JPEGImages", "*.png").unlink(),
        r"train\.txt lists '0001TP_007530', but there is no JPEGImages/0001TP_007530\.jpg",
    ),
    "voc: empty split": (
        make_voc,
        {},
        lambda r: (r / "ImageSets" / "Segmentation" / "val.txt").write_text(""),
        r"split val is empty: .*val\.txt lists no images",
    ),
    "voc: unknown colours (CVAT)": (
        lambda root: make_voc(root, mask_mode="RGB"),
        {},
        lambda r: paint_unknown_colour(_first(r / "SegmentationClass", "*.png"), 20000),
        r"train: 20,000 label pixels .* have colours not in labelmap\.txt, e\.g\. 0001TP_007530",
    ),
    "folders: mask missing": (
        make_folders,
        {},
        lambda r: _first(r / "masks" / "val", "*.png").unlink(),
        r"no label for images/val/0016E5_07975\.png \(looked for masks/val/0016E5_07975\.png\)",
    ),
    "folders: mask without image": (
        make_folders,
        {},
        lambda r: _first(r / "images" / "test", "*.png").unlink(),
        r"label masks/test/0001TP_007590\.png has no image",
    ),
    "folders: no val split": (
        lambda root: make_folders(root, splits=("train",)),
        {},
        lambda r: None,
        r"no val split in .* \(folders layout\)",
    ),
    "folders: colour masks without classes": (
        make_folders,
        {},
        lambda r: paint_unknown_colour(_first(r / "masks" / "train", "*.png"), 1),
        r"0001TP_007530\.png is a RGB image; index masks are single-channel",
    ),
    "folders: one class only": (
        lambda root: make_folders(root, table={i: 0 for i in range(12)}),
        {},
        lambda r: None,
        r"the masks of .* \(values 0\.\.0, 255 = void\) gives 1 class; a segmentation needs "
        r"2 to 255",
    ),
    "layout named but not there": (
        make_folders,
        {"layout": "cityscapes"},
        lambda r: None,
        r"is not a cityscapes layout: expected leftImg8bit/ with gtFine/",
    ),
}


@pytest.mark.parametrize("case", list(BREAKAGE))
def test_bad_input_is_one_line_and_nothing_is_written(tmp_path, case):
    make, options, damage, expected = BREAKAGE[case]
    root = make(tmp_path / "data")
    damage(root)
    with pytest.raises((DataError, ConfigError)) as err:
        preprocess_to(root, tmp_path / "out", image_size=SIZE, workers=2, **options)
    assert "\n" not in str(err.value)
    assert __import__("re").search(expected, str(err.value)), str(err.value)
    assert nothing_written(tmp_path)


CLASS_FILES = {
    "duplicate colour": ("c.csv", "name,r,g,b\nsky,1,2,3\nroad,1,2,3\n", "already used by 'sky'"),
    "duplicate name": ("c.json", '[{"name": "a"}, {"name": "a"}]', "name 'a' of 'a' is already"),
    "duplicate value": ("c.csv", "name,value\na,0\nb,0\n", "value 0 of 'b' is already used"),
    "bad colour": ("c.yaml", "- name: a\n  color: [1, 2]\n", "a colour is three integers"),
    "bad yaml": ("c.yaml", "- name: [unclosed\n", "is not valid YAML"),
    "no name column": ("c.csv", "label,r,g,b\n", "lacks column 'name'"),
    "wrong suffix": ("c.txt", "a\nb\n", "must be .csv, .json or .yaml"),
}


@pytest.mark.parametrize("case", list(CLASS_FILES))
def test_bad_classes_files_name_the_file(tmp_path, case):
    name, text, expected = CLASS_FILES[case]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_classes_file(path)
    assert expected in str(err.value) and str(path) in str(err.value)


def test_cli_names_the_layout_and_options_reach_it(tmp_path):
    root = make_folders(tmp_path / "mine", per_split=False)
    result = invoke(
        "preprocess", str(root), str(tmp_path / "out"), "--size", SIZE, "--val-fraction",
        "0.5", "--split-seed", "3", "--workers", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "folders layout -> mask values (11 classes + void)" in result.stdout.replace("\n", " ")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["splits"]["val"]["records"] == 20
    bad = invoke("preprocess", str(root), str(tmp_path / "o2"), "--layout", "coco")
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 2 and len(lines) == 1, bad.stderr
    assert "--layout: 'coco'; use one of camvid-kaggle, camvid-segnet, cityscapes" in lines[0]
    assert not (tmp_path / "o2").exists()
