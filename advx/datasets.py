"""The datasets advx knows: what each one is, in one place.

A ``Dataset`` names its files (torchvision's raw layout, ``<data_dir>/<folder>/raw/``) and
the md5 of each file's *decompressed* contents (a recompressed ``.gz`` is fine), its image
shape and split sizes, its class names and its standard attack budgets per threat model.
Nothing elsewhere holds a constant of a dataset: ``advx.idx`` checks the files against
these fields, models are built for the shape and class count, and the CLI's defaults
(``--eps``, the ``advx eval`` curve) are read from here. A name is resolved to its
``Dataset`` once, where it comes in (``get_dataset``: the CLI, ``load_dataset``, a config);
below that, functions take the object.

Adding a dataset of grey idx files is one entry in ``DATASETS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from advx.validate import InputError

IMAGE_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
LABEL_FILES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}
SPLITS = {split: (IMAGE_FILES[split], LABEL_FILES[split]) for split in ("train", "test")}
IDX_NAMES = tuple(name for pair in SPLITS.values() for name in pair)
RAW_FILES = tuple(f"{name}.gz" for name in IDX_NAMES)


@dataclass(frozen=True)
class Dataset:
    """One dataset: ``name`` (``--dataset``), ``title`` (for people), ``folder`` (under the
    data folder), ``md5`` of each idx file's contents, ``shape`` of one image ``(C, H, W)``,
    ``sizes`` (images per split), ``classes`` (index -> name),
    ``eps`` (the standard budget per norm) and ``curve`` (``advx eval``'s default budgets
    per norm), ``source`` (the torchvision class whose mirrors serve the files) and
    ``normalization`` (the usual ``(mean, std)`` of its pixels, which models trained on
    normalized images of it most often use)."""

    name: str
    title: str
    folder: str
    md5: dict
    classes: tuple
    eps: dict
    curve: dict
    source: str
    normalization: tuple
    citation: str
    shape: tuple = (1, 28, 28)
    sizes: dict = field(default_factory=lambda: {"train": 60000, "test": 10000})

    @property
    def num_classes(self) -> int:
        return len(self.classes)


MNIST = Dataset(
    name="mnist", title="MNIST", folder="MNIST", source="MNIST", normalization=(0.1307, 0.3081),
    md5={"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
         "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
         "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
         "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"},
    classes=tuple(str(d) for d in range(10)),
    # Linf 0.3 (Madry et al. 2018), L2 2 and L1 10 (Croce & Hein; Maini et al. 2020); L0 in
    # changed pixels, 5 to 20 of 784, and patches of side 4 to 8 of 28 (choices: sparse and
    # patch attacks on MNIST report budgets in these ranges); frames of width 1 to 3 (Sparse-RS's
    # are 2 and 3 wide on larger images; MNIST's border is blank, so a thin one may already do).
    eps={"inf": 0.3, "2": 2.0, "1": 10.0, "0": 10.0, "patch": 6.0, "frame": 2.0},
    curve={"inf": (0.05, 0.1, 0.2, 0.3), "2": (0.5, 1.0, 1.5, 2.0), "1": (2.5, 5.0, 7.5, 10.0),
           "0": (5.0, 10.0, 15.0, 20.0), "patch": (4.0, 6.0, 8.0),
           "frame": (1.0, 2.0, 3.0)},
    citation="LeCun et al. 1998",
)

FASHION_MNIST = Dataset(
    name="fashion-mnist", title="Fashion-MNIST", folder="FashionMNIST", source="FashionMNIST",
    normalization=(0.2860, 0.3530),
    md5={"train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
         "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
         "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
         "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"},
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"),
    # Linf 0.1 is the usual budget (Wong & Kolter 2018; Croce & Hein 2020). L2 and L1 have
    # no common standard: advx takes half of MNIST's (1 and 5), a choice, not a convention;
    # L0, patches and frames the same counts of pixels as MNIST.
    eps={"inf": 0.1, "2": 1.0, "1": 5.0, "0": 10.0, "patch": 6.0, "frame": 2.0},
    curve={"inf": (0.025, 0.05, 0.075, 0.1), "2": (0.25, 0.5, 0.75, 1.0), "1": (1.25, 2.5, 3.75, 5.0),
           "0": (5.0, 10.0, 15.0, 20.0), "patch": (4.0, 6.0, 8.0),
           "frame": (1.0, 2.0, 3.0)},
    citation="Xiao et al. 2017 (Zalando, MIT licence)",
)

DATASETS = {d.name: d for d in (MNIST, FASHION_MNIST)}
DATASET_NAMES = list(DATASETS)


def get_dataset(dataset: "str | Dataset") -> Dataset:
    """A ``Dataset`` by name (``"mnist"``, ``"fashion-mnist"``), or the one given: where a
    name comes in (the CLI, a public function, a config), resolved once."""
    if isinstance(dataset, Dataset):
        return dataset
    if dataset not in DATASETS:
        raise InputError(f"dataset must be one of {DATASET_NAMES}, got {dataset!r}")
    return DATASETS[dataset]
