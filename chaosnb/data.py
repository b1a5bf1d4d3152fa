"""Datasets as the paper prepares them, held in memory, and a seeded mini-batch sampler.

USPS (native 16x16) and Fashion-MNIST (28x28 resized to 16x16) are loaded through torchvision,
scaled to [0, 1] (``ToTensor``), and normalised with ONE scalar mean and ONE scalar std computed over
the whole training split. The test split is the validation set.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATA_ENV = "CHAOSNB_DATA"
DATASETS = ("usps", "fashion_mnist")
_ALIASES = {"usps": "usps", "fashion_mnist": "fashion_mnist", "fashionmnist": "fashion_mnist",
            "fashion-mnist": "fashion_mnist", "fmnist": "fashion_mnist"}
IMAGE_SIZE = 16
NUM_CLASSES = 10


class DatasetNotFoundError(FileNotFoundError):
    """The dataset files are missing and could not be downloaded."""


def canonical_dataset_name(name: str) -> str:
    """Map a user-facing dataset name to its canonical form, or raise with the valid names."""
    key = str(name).lower().replace(" ", "_")
    if key not in _ALIASES:
        raise ValueError(f"unknown dataset {name!r}; valid datasets are: {', '.join(DATASETS)}")
    return _ALIASES[key]


def data_root() -> Path:
    """The data root: ``$CHAOSNB_DATA`` if set, else ``~/.cache/chaosnb/data``."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "chaosnb" / "data"


@dataclass(frozen=True)
class Dataset:
    """One dataset as float32 tensors of shape (n, 1, 16, 16), normalised, with integer labels.

    ``mean`` and ``std`` are the scalar statistics of the training split on the [0, 1] scale that were
    used to normalise both splits: x_normalised = (x - mean) / std.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: float
    std: float
    root: str

    @property
    def n_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test_x.shape[0])

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    def unnormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Back to the [0, 1] pixel scale."""
        return x * self.std + self.mean


def _raw_split(name: str, root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images on the [0, 1] scale, shape (n, 1, H, W), and int64 labels, straight from torchvision."""
    import torchvision

    cls = {"usps": torchvision.datasets.USPS, "fashion_mnist": torchvision.datasets.FashionMNIST}[name]
    ds = cls(str(root), train=train, download=download)
    data = ds.data
    images = torch.as_tensor(np.asarray(data)) if not isinstance(data, torch.Tensor) else data
    images = images.to(torch.float32).div_(255.0).unsqueeze(1)
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return images, labels


def _missing_message(name: str, root: Path, reason: str) -> str:
    return (
        f"dataset {name!r} not found under {root} ({reason}). Set the environment variable {DATA_ENV} "
        f"to a folder laid out as a torchvision root that holds it (in this project: "
        f"{DATA_ENV}=../shared/data), or run where torchvision can download it."
    )


def _load_split(name: str, root: Path, train: bool, download: bool | None):
    try:
        return _raw_split(name, root, train, download=False)
    except (RuntimeError, FileNotFoundError, OSError) as err:
        if download is False:
            raise DatasetNotFoundError(_missing_message(name, root, f"download disabled; {err}")) from err
    try:
        root.mkdir(parents=True, exist_ok=True)
        return _raw_split(name, root, train, download=True)
    except Exception as err:  # noqa: BLE001 - any download failure becomes one clear message
        raise DatasetNotFoundError(_missing_message(name, root, f"download failed: {err}")) from err


def resize_images(images: torch.Tensor, size: int = IMAGE_SIZE, chunk: int = 10000) -> torch.Tensor:
    """Bilinear, antialiased resize of (n, 1, H, W) images, as torchvision's ``Resize(size)``."""
    from torchvision.transforms.functional import resize

    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    parts = [resize(images[i : i + chunk], [size, size], antialias=True) for i in range(0, len(images), chunk)]
    return torch.cat(parts)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: str, download: bool | None) -> Dataset:
    path = Path(root)
    train_x, train_y = _load_split(name, path, True, download)
    test_x, test_y = _load_split(name, path, False, download)
    train_x, test_x = resize_images(train_x), resize_images(test_x)
    mean = float(train_x.double().mean())
    std = float(train_x.double().std())
    train_x = (train_x - mean) / std
    test_x = (test_x - mean) / std
    for t in (train_x, train_y, test_x, test_y):
        t.requires_grad_(False)
    return Dataset(name, train_x, train_y, test_x, test_y, mean, std, str(path))


def load_dataset(name: str, root: str | os.PathLike | None = None, download: bool | None = None) -> Dataset:
    """Load a dataset (``"usps"`` or ``"fashion_mnist"``) fully into memory, normalised as in the paper.

    ``root`` defaults to :func:`data_root`. With ``download=None`` torchvision may download missing
    files; when that is impossible a :class:`DatasetNotFoundError` names the dataset, the path and the
    environment variable to set.
    """
    canonical = canonical_dataset_name(name)
    path = Path(root).expanduser().resolve() if root is not None else data_root()
    return _load_cached(canonical, str(path), download)


def available_datasets(root: str | os.PathLike | None = None) -> dict[str, Dataset | str]:
    """Every known dataset that loads without downloading, else the reason it does not."""
    found: dict[str, Dataset | str] = {}
    for name in DATASETS:
        try:
            found[name] = load_dataset(name, root, download=False)
        except DatasetNotFoundError as err:
            found[name] = str(err)
    return found


class BatchSampler:
    """Seeded mini-batch index sequence; batch ``t`` is a pure function of (seed, n, batch_size, t).

    Each epoch is a fresh permutation drawn from a generator seeded with (seed, epoch); like a
    ``DataLoader(shuffle=True, drop_last=False)`` the last batch of an epoch may be smaller. Because
    batches are addressed by step, several models can be trained on exactly the same batches and an
    interrupted run resumes at step t with the batches it would have seen.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if n <= 0 or batch_size <= 0:
            raise ValueError(f"need n > 0 and batch_size > 0, got n={n}, batch_size={batch_size}")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.steps_per_epoch = -(-self.n // self.batch_size)
        self._epoch = -1
        self._perm: torch.Tensor | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        """The sample order of one epoch."""
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch, self.n])
                                                    .generate_state(1)[0]))
            self._perm = torch.randperm(self.n, generator=gen)
            self._epoch = epoch
        assert self._perm is not None
        return self._perm

    def indices(self, step: int) -> torch.Tensor:
        """Sample indices of the mini-batch used at training step ``step`` (0-based)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, within = divmod(int(step), self.steps_per_epoch)
        start = within * self.batch_size
        return self.permutation(epoch)[start : start + self.batch_size]

    def batch(self, dataset: Dataset, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) of training step ``step``."""
        idx = self.indices(step)
        return dataset.train_x[idx], dataset.train_y[idx]


def sampler_for(dataset: Dataset, batch_size: int, seed: int) -> BatchSampler:
    """The sampler of a dataset's training split."""
    return BatchSampler(dataset.n_train, batch_size, seed)
