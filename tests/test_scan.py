"""Finding images and labels: the folder layout, the CSV manifest, and every layout mistake."""

from pathlib import Path

import pytest
from conftest import make_image

from retrieval.data.records import ImageRecord
from retrieval.data.scan import (
    IMAGE_EXTENSIONS,
    load_records,
    parse_group,
    read_manifest,
    scan_folder,
)
from retrieval.errors import InputError


@pytest.mark.parametrize(
    ("stem", "group"),
    [
        ("dog1-p03_1", "dog1-p03"),
        ("a_b_c", "a_b"),  # the LAST underscore splits
        ("x_1", "x"),
        ("noseparator", None),
        ("_1", None),  # empty ID
        ("abc_", None),  # empty sequence
    ],
)
def test_parse_group(stem, group):
    assert parse_group(stem) == group


def test_scan_tiny_data(tiny_data):
    records = scan_folder(tiny_data)
    assert len(records) == 34
    assert records == sorted(records)
    assert {r.label for r in records} == {"amber", "blue", "green", "grey", "magenta", "red"}
    assert len({r.group for r in records}) == 24
    assert all(r.path.is_absolute() and r.path.is_file() for r in records)
    r = next(r for r in records if r.path.name == "blue-g1_2.png")
    assert r == ImageRecord(
        path=tiny_data.absolute() / "blue" / r.path.name, label="blue", group="blue-g1"
    )


def test_scan_ignores_hidden_and_non_image_files(tiny_data):
    (tiny_data / "red" / "notes.txt").write_text("hello")
    (tiny_data / "red" / "Thumbs.db").write_bytes(b"\0")
    (tiny_data / "red" / ".hidden_1.jpg").write_bytes(b"")
    make_image(tiny_data / ".cache" / "x_1.jpg")  # hidden folder: not a class
    (tiny_data / "README.md").write_text("about the data")  # non-image at the root
    make_image(tiny_data / "red" / "upper-case_1.JPG")
    records = scan_folder(tiny_data)
    assert len(records) == 35
    assert {r.label for r in records} == {"amber", "blue", "green", "grey", "magenta", "red"}
    assert any(r.path.name == "upper-case_1.JPG" for r in records)


def test_image_extensions_are_lower_case_suffixes():
    assert {".jpg", ".jpeg", ".png", ".pgm", ".webp", ".tiff"} <= IMAGE_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)


def test_scan_is_independent_of_creation_order(tmp_path):
    for name in ["b/z_1.png", "a/y_2.png", "a/y_1.png", "b/x_1.png"]:
        make_image(tmp_path / name, size=(8, 8))
    names = [(r.label, r.path.name) for r in scan_folder(tmp_path)]
    assert names == [("a", "y_1.png"), ("a", "y_2.png"), ("b", "x_1.png"), ("b", "z_1.png")]


# Layout errors: each names the folder or file and says how to fix it ---------------------


def test_missing_data_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match="does not exist") as e:
        load_records(missing)
    assert str(missing) in str(e.value)


def test_root_is_not_a_folder(tmp_path):
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(InputError, match="not a folder") as e:
        scan_folder(f)
    assert str(f) in str(e.value)
    with pytest.raises(InputError, match=r"not a \.csv manifest"):
        load_records(f)


def test_empty_data_folder(tmp_path):
    with pytest.raises(InputError, match="no class sub-folders") as e:
        scan_folder(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_class_folders_without_any_image(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no images found") as e:
        scan_folder(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_class_folder_with_no_images(tiny_data):
    (tiny_data / "zebra").mkdir()
    with pytest.raises(InputError, match="zebra") as e:
        scan_folder(tiny_data)
    assert "remove the folder" in str(e.value)


def test_images_outside_class_folders(tiny_data):
    make_image(tiny_data / "stray_1.jpg")
    with pytest.raises(InputError, match=r"stray_1\.jpg"):
        scan_folder(tiny_data)


def test_bad_file_names_listed_up_to_five(tiny_data):
    for i in range(7):
        make_image(tiny_data / "red" / f"photo{i}.jpg", size=(8, 8))
    with pytest.raises(InputError) as e:
        scan_folder(tiny_data)
    msg = str(e.value)
    assert "7 file name(s)" in msg and "and 2 more" in msg
    assert "red/photo0.jpg" in msg and "red/photo6.jpg" not in msg
    assert "rename to {ID}_{seq}.ext" in msg


def test_group_id_under_two_classes(tiny_data):
    make_image(tiny_data / "blue" / "red-g0_9.jpg")  # red-g0 already lives in red/
    with pytest.raises(InputError, match="red-g0") as e:
        scan_folder(tiny_data)
    assert "blue and red" in str(e.value)


# Manifest -------------------------------------------------------------------------------


def _manifest(folder: Path, text: str, n_images: int = 3) -> Path:
    for i in range(n_images):
        make_image(folder / "imgs" / f"img{i}.png", size=(8, 8), seed=i)
    csv = folder / "train.csv"
    csv.write_text(text)
    return csv


def test_manifest_with_ground_truth_column_and_image_root(tmp_path):
    csv = _manifest(
        tmp_path, "filename,ground_truth\nimg0.png,Dog1\nimg1.png,Dog2\nimg2.png,Dog1\n"
    )
    records = read_manifest(csv, tmp_path / "imgs")
    assert [(r.path.name, r.label, r.group) for r in records] == [
        ("img0.png", "Dog1", "img0.png"),  # no group column: each image its own group
        ("img1.png", "Dog2", "img1.png"),
        ("img2.png", "Dog1", "img2.png"),
    ]
    assert all(r.path.is_absolute() for r in records)


def test_manifest_with_group_column_relative_to_csv_folder(tmp_path):
    text = (
        "\ufeffFilename, Label ,group\nimgs/img0.png,a,g1\nimgs/img1.png,a,g1\nimgs/img2.png,b,\n"
    )
    csv = _manifest(tmp_path, text)
    records = load_records(csv)  # BOM, spaces and capitals in the header are tolerated
    assert [(r.label, r.group) for r in records] == [
        ("a", "g1"),
        ("a", "g1"),
        ("b", "imgs/img2.png"),
    ]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("file,label\nimg0.png,a\n", "has columns file,label; expected filename,label"),
        ("filename,label\n", "no rows"),
        ("", "has columns \\(none\\)"),
        ("filename,label\nimg0.png,\nimg1.png,b\n", "empty filename or label \\(lines 2\\)"),
        ("filename,label\nimg0.png,a\nimg0.png,a\nimg1.png,b\n", "more than once: img0.png"),
        ("filename,label,group\nimg0.png,a,g\nimg1.png,b,g\n", "group ID 'g' appears under"),
    ],
)
def test_manifest_errors_name_the_csv(tmp_path, text, match):
    csv = _manifest(tmp_path, text)
    with pytest.raises(InputError, match=match) as e:
        read_manifest(csv, tmp_path / "imgs")
    assert str(csv) in str(e.value)


def test_manifest_missing_files_mentions_image_root(tmp_path):
    rows = "".join(f"nothere{i}.png,a\n" for i in range(8))
    csv = _manifest(tmp_path, "filename,label\nimgs/img0.png,a\n" + rows)
    with pytest.raises(InputError, match="8 of 9 files not found") as e:
        read_manifest(csv, None)  # images are in imgs/, not beside the CSV
    msg = str(e.value)
    assert "--image_root" in msg and "nothere0.png" in msg and "and 3 more" in msg


def test_missing_manifest(tmp_path):
    with pytest.raises(InputError, match="does not exist") as e:
        load_records(tmp_path / "train.csv")
    assert str(tmp_path / "train.csv") in str(e.value)


def test_image_root_with_a_folder_is_refused(tiny_data, tmp_path):
    with pytest.raises(InputError, match="--image_root"):
        load_records(tiny_data, image_root=tmp_path)


# Real data -------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_scan_dogfacenet(shared_data):
    records = scan_folder(shared_data / "dogfacenet")
    assert len(records) == 5860
    assert len({r.label for r in records}) == 1267
    assert len({r.group for r in records}) == 5860  # every photo is its own group


@pytest.mark.shared_data
def test_read_kaggle_style_manifest(shared_data):
    root = shared_data / "dogs_kaggle"
    records = load_records(root / "train.csv", image_root=root / "train")
    assert len(records) == 366
    assert len({r.label for r in records}) == 31


@pytest.mark.shared_data
def test_kaggle_manifest_without_image_root_suggests_it(shared_data):
    csv = shared_data / "dogs_kaggle" / "train.csv"
    with pytest.raises(InputError, match="366 of 366 files not found") as e:
        load_records(csv)
    assert f"perhaps --image_root {csv.parent / 'train'}" in str(e.value)
