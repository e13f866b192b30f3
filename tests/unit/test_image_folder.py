"""`--data.image_folder`'s reader (mnist_lightning.data.folders) on small folders made with PIL: every format and
mode, the two layouts, the split, the cache, and every bad input refused or skipped in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_lightning.data import folders
from mnist_lightning.data.folders import (
    SKIPPED_FILE,
    count_of,
    folder_spec,
    folder_splits,
    hold_out,
    list_folder,
    open_image_folder,
)
from mnist_lightning.data.images import prepare_image
from mnist_lightning.data.module import MNISTDataModule
from mnist_lightning.datasets import IMAGE_FOLDER, RESIZE
from mnist_lightning.errors import ArgumentError, DataError


def grey(value: int, size: tuple[int, int] = (12, 10)) -> Image.Image:
    """A grey image of `size` (height, width) around `value`, with a little noise so that every image differs."""
    noise = np.random.default_rng(value).integers(0, 8, size)
    return Image.fromarray(np.clip(value + noise, 0, 255).astype(np.uint8), "L")


def make_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (12, 10)) -> Path:
    """ROOT/<class>/<i>.png, `classes[name]` grey PNGs in each, a class's images all around its own grey level."""
    for c, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            grey(40 + 70 * c + i % 5, size).save(root / name / f"{i:03d}.png")
    return root


def test_every_format_and_mode_becomes_the_same_shape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    rgb = np.random.default_rng(0).integers(0, 255, (12, 10, 3), dtype=np.uint8)
    images = {
        "grey.png": grey(100),
        "rgb.jpg": Image.fromarray(rgb),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full((12, 10), 128, np.uint8)]), "RGBA"),
        "palette.gif": Image.fromarray(rgb).convert("P"),
        "palette.bmp": Image.fromarray(rgb).quantize(8),
        "sixteen.png": Image.fromarray((np.arange(120).reshape(12, 10) * 500).astype(np.uint16)),
        "sixteen.tif": Image.fromarray((np.arange(120).reshape(12, 10) * 500).astype(np.uint16)),
        "float.tif": Image.fromarray(np.linspace(0, 1, 120, dtype=np.float32).reshape(12, 10)),
        "la.png": grey(90).convert("LA"),
        "large.webp": Image.fromarray(rgb).resize((40, 48)),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "bilevel.tif": grey(100).convert("1"),
    }
    for name, image in images.items():
        image.save(root / ("a" if len(name) % 2 else "b") / name)
    data = open_image_folder(root, tmp_path / "data", size=(12, 10))
    assert data.image_shape == (3, 12, 10), "colour images among them: RGB"
    assert len(data.splits["all"].labels) == len(images)
    assert not (data.cache / SKIPPED_FILE).exists()
    grey_data = open_image_folder(root, tmp_path / "data", channels=1, size=(6, 5))
    assert grey_data.splits["all"].images.shape == (len(images), 1, 6, 5)


def test_sixteen_bit_and_float_pixels_are_scaled_to_eight_bits(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "white16.png")
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "half.tif")
    Image.fromarray(np.full((8, 8), 200.0, np.float32)).save(tmp_path / "level200.tif")
    Image.fromarray(np.full((8, 8), 1000.0, np.float32)).save(tmp_path / "beyond.tif")
    assert prepare_image(tmp_path / "white16.png", (1, 8, 8), RESIZE).unique().tolist() == [255]
    assert prepare_image(tmp_path / "half.tif", (1, 8, 8), RESIZE).unique().tolist() == [128]
    assert prepare_image(tmp_path / "level200.tif", (1, 8, 8), RESIZE).unique().tolist() == [200]
    with pytest.raises(Exception, match="0-1"):
        prepare_image(tmp_path / "beyond.tif", (1, 8, 8), RESIZE)


def test_transparency_is_flattened_onto_white_and_grey_kept_as_one_channel(tmp_path: Path) -> None:
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert prepare_image(tmp_path / "clear.png", (3, 8, 8), RESIZE).unique().tolist() == [255]
    assert prepare_image(tmp_path / "clear.png", (1, 4, 4), RESIZE).shape == (1, 4, 4)


def test_defaults_are_the_most_common_size_and_grey_when_every_image_is(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "root", {"a": 10, "b": 10}, size=(12, 10))
    grey(50, (30, 20)).save(root / "a" / "odd.png")
    data = open_image_folder(root, tmp_path / "data")
    assert data.image_shape == (1, 12, 10)
    assert "most common size" in data.summary and "every training image is grey" in data.summary


def test_class_names_are_the_folders_in_sorted_order_unicode_kept(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "root", {"zèbre": 4, "Äpfel": 4, "猫": 4})
    listing = list_folder(root)
    assert listing.classes == tuple(sorted(["zèbre", "Äpfel", "猫"]))
    assert folder_spec(open_image_folder(root, tmp_path / "d"), open_image_folder(root, tmp_path / "d").splits["all"])


def test_hidden_files_are_ignored_and_bad_files_skipped_listed_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = make_folder(tmp_path / "root", {"a": 20, "b": 20})
    (root / "a" / ".DS_Store").write_bytes(b"\0\0")
    (root / "b" / "Thumbs.db").write_bytes(b"\0\0")
    (root / ".hidden").mkdir()
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "b" / "empty.png").write_bytes(b"")
    (root / "b" / "broken-link.png").symlink_to(tmp_path / "nowhere.png")
    data = open_image_folder(root, tmp_path / "data")
    assert len(data.splits["all"].labels) == 40
    skipped = (data.cache / SKIPPED_FILE).read_text()
    assert "a/notes.txt" in skipped and "b/empty.png" in skipped and "broken-link" in skipped
    assert ".DS_Store" not in skipped and "Thumbs" not in skipped
    assert "skipped 3 of 43 files" in capsys.readouterr().err


def test_more_than_a_tenth_bad_is_refused_with_the_list(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "root", {"a": 5, "b": 5})
    for i in range(3):
        (root / "a" / f"bad{i}.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"3 of 13 files are not usable images, over 10 ?%.*skipped\.txt"):
        open_image_folder(root, tmp_path / "data")


def test_images_too_small_to_resize_are_skipped(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "root", {"a": 20, "b": 20}, size=(40, 40))
    grey(10, (4, 4)).save(root / "a" / "tiny.png")
    data = open_image_folder(root, tmp_path / "data")
    assert "too small" in (data.cache / SKIPPED_FILE).read_text()
    with pytest.raises(DataError, match=r"smaller --data\.image_size"):
        open_image_folder(root, tmp_path / "data", size=(400, 400))


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda r: make_folder(r, {"a": 3, "empty": 0}), DataError, "holds no files"),
        (lambda r: make_folder(r, {"only": 5}), DataError, "only one class"),
        (lambda r: (make_folder(r, {"a": 3, "b": 3}), (r / "a" / "deeper").mkdir()), DataError, "inside a class"),
        (lambda r: None, ArgumentError, "no such folder"),
        (lambda r: r.write_text("a file"), ArgumentError, "is a file"),
        (
            lambda r: (make_folder(r / "train", {"a": 3, "b": 3}), make_folder(r / "val", {"a": 2, "c": 2})),
            DataError,
            "'c' is in val/ but not in train/",
        ),
        (lambda r: (make_folder(r / "train", {"a": 3, "b": 3}), (r / "extra").mkdir()), DataError, "beside extra"),
        (lambda r: make_folder(r / "test", {"a": 3, "b": 3}), DataError, "no train/"),
    ],
)
def test_bad_layouts_are_refused_in_one_line(tmp_path: Path, build, error: type, message: str) -> None:
    root = tmp_path / "root"
    build(root)
    with pytest.raises(error, match=message) as info:
        open_image_folder(root, tmp_path / "data")
    assert "\n" not in str(info.value)


def test_symlinks_to_files_and_class_folders_are_followed(tmp_path: Path) -> None:
    elsewhere = make_folder(tmp_path / "elsewhere", {"b": 6})
    root = make_folder(tmp_path / "root", {"a": 6})
    (root / "b").symlink_to(elsewhere / "b", target_is_directory=True)
    (root / "a" / "link.png").symlink_to(elsewhere / "b" / "000.png")
    data = open_image_folder(root, tmp_path / "data")
    assert data.classes == ("a", "b") and len(data.splits["all"].labels) == 13


def test_the_cache_is_read_again_only_when_the_folder_or_the_rule_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_folder(tmp_path / "root", {"a": 6, "b": 6})
    first = open_image_folder(root, tmp_path / "data")
    assert sorted(p.name for p in first.cache.iterdir()) == ["all.pt", "facts.json"]

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(folders, "_decode", no_decoding)
    again = open_image_folder(root, tmp_path / "data")
    assert again.cache == first.cache
    torch.testing.assert_close(again.splits["all"].images, first.splits["all"].images)
    monkeypatch.undo()

    grey(1).save(root / "a" / "000.png")  # another image under the same name
    os.utime(root / "a" / "000.png", ns=(1, 1))
    changed = open_image_folder(root, tmp_path / "data")
    assert changed.cache != first.cache
    assert open_image_folder(root, tmp_path / "data", channels=3).cache not in (first.cache, changed.cache)

    (changed.cache / "all.pt").write_bytes(b"truncated")  # a broken cache is never used
    facts = json.loads((changed.cache / "facts.json").read_text())
    reread = open_image_folder(root, tmp_path / "data")
    assert json.loads((reread.cache / "facts.json").read_text())["files"] == facts["files"]
    assert len(reread.splits["all"].labels) == 12


def test_the_split_is_seeded_stratified_and_sized_by_count_or_fraction(tmp_path: Path) -> None:
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    val, test, rest = hold_out(labels, [10, 20])
    again = hold_out(labels, [10, 20])
    assert all(torch.equal(a, b) for a, b in zip((val, test, rest), again, strict=True))
    assert (len(val), len(test), len(rest)) == (10, 20, 70)
    assert torch.cat([val, test, rest]).sort().values.tolist() == list(range(100))
    assert torch.bincount(labels[val]).tolist() == [6, 3, 1] and torch.bincount(labels[test]).tolist() == [12, 6, 2]
    assert count_of(0.1, 300, "val_size") == 30 and count_of(7, 300, "val_size") == 7
    for wrong in (0, 1.5, -0.1):
        with pytest.raises(ArgumentError, match="val_size"):
            count_of(wrong, 300, "val_size")


def test_split_folders_are_used_and_what_is_missing_held_out_of_train(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_folder(root / "train", {"a": 20, "b": 20})
    make_folder(root / "valid", {"a": 3, "b": 2})
    data = open_image_folder(root, tmp_path / "data")
    train, val, test = folder_splits(data, None, 4)
    assert (len(train.labels), len(val.labels), len(test.labels)) == (36, 5, 4)
    assert all(name.startswith("valid/") for name in val.files)


def test_the_data_module_serves_a_folder_and_records_its_facts(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "root", {"b": 30, "a": 30})
    dm = MNISTDataModule(data_dir=tmp_path / "data", image_folder=root, image_size=8, batch_size=16)
    assert (dm.input_size, dm.num_classes) == (64, 2) and 0 < dm.mean < 1 and dm.std > 0
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (48, 6, 6)
    facts = dm.state_dict()["dataset"]
    assert facts == {"name": IMAGE_FOLDER, "image_shape": [1, 8, 8], "classes": ["a", "b"], "preparation": RESIZE}
    with pytest.raises(ArgumentError, match=r"are for --data\.image_folder"):
        MNISTDataModule(image_size=8)
    with pytest.raises(ArgumentError, match="exclude each other"):
        MNISTDataModule(data_dir=tmp_path / "data", image_folder=root, dataset="mnist")
