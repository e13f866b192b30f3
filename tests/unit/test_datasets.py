"""The datasets the project knows: one entry each, the facts a checkpoint records, and registering another."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mnist_lightning import datasets
from mnist_lightning.data.sources import SOURCES
from mnist_lightning.datasets import (
    DATASETS,
    DEFAULT_DATASET,
    IDX_FILES,
    dataset_of_record,
    get_dataset,
    register_dataset,
)
from mnist_lightning.errors import ArgumentError, CheckpointError


def test_dataset_specs_are_one_entry_each() -> None:
    assert set(DATASETS) == {"mnist", "fashion_mnist"} and DEFAULT_DATASET in DATASETS
    assert all(dataclasses.is_dataclass(spec) and len(spec.sha256) == 4 for spec in DATASETS.values())
    assert all(set(spec.sources) <= set(SOURCES) for spec in DATASETS.values()), "every source is one of SOURCES"


def test_the_network_sizes_and_the_raw_folder_come_from_the_entry() -> None:
    mnist = DATASETS["mnist"]
    assert (mnist.input_size, mnist.num_classes) == (784, 10)
    assert mnist.raw_dir("data") == Path("data") / "MNIST" / "raw"
    assert DATASETS["fashion_mnist"].raw_dir("data") == Path("data") / "FashionMNIST" / "raw"


def test_the_recorded_facts_give_back_the_same_entry() -> None:
    spec = DATASETS["fashion_mnist"]
    facts = spec.facts()
    assert facts["name"] == "fashion_mnist" and facts["classes"][0] == "T-shirt/top"
    assert spec.with_facts(facts) == spec
    assert dataset_of_record(facts, "a checkpoint") == spec


def test_a_recorded_dataset_this_process_does_not_know_keeps_its_facts_and_incomplete_ones_are_refused() -> None:
    facts = {"name": "letters", "image_shape": [1, 20, 20], "classes": list("abc"), "mean": 0.2, "std": 0.3}
    spec = dataset_of_record(facts, "a checkpoint")
    assert (spec.name, spec.image_shape, spec.classes, spec.input_size) == (
        "letters",
        (1, 20, 20),
        ("a", "b", "c"),
        400,
    )
    with pytest.raises(CheckpointError, match="a checkpoint records its dataset incompletely"):
        dataset_of_record({"name": "letters"}, "a checkpoint")


def test_an_unknown_dataset_is_refused_with_the_closest_name() -> None:
    assert get_dataset("mnist") is DATASETS["mnist"]
    with pytest.raises(ArgumentError, match=r"'fashion' is not a known dataset: did you mean fashion_mnist\?"):
        get_dataset("fashion")


def test_register_dataset_adds_an_entry_once_with_every_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "DATASETS", dict(DATASETS))  # as it was, after the test
    letters = dataclasses.replace(
        DATASETS["mnist"], name="letters", folder="Letters", classes=tuple("abcdefghijklmnopqrstuvwxyz"), mean=0.17
    )
    register_dataset(letters)
    assert get_dataset("letters") is letters and letters.num_classes == 26
    with pytest.raises(ValueError, match="registered already"):
        register_dataset(letters)
    register_dataset(dataclasses.replace(letters, mean=0.2), replace_existing=True)
    assert datasets.DATASETS["letters"].mean == 0.2
    with pytest.raises(ValueError, match="sha256 must give the digest of each of"):
        register_dataset(dataclasses.replace(letters, name="partial", sha256={IDX_FILES[0]: "0" * 64}))
