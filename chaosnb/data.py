"""Datasets as the paper prepares them, held in memory, and a seeded mini-batch sampler.

USPS (native 16x16) and Fashion-MNIST (28x28 resized to 16x16) are loaded through torchvision,
scaled to [0, 1] (``ToTensor``), and normalised with ONE scalar mean and ONE scalar std computed over
the whole training split. The test split is the validation set.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
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
SPLIT_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "usps": {"train": ("usps.bz2",), "test": ("usps.t.bz2",)},
    "fashion_mnist": {
        "train": ("FashionMNIST/raw/train-images-idx3-ubyte", "FashionMNIST/raw/train-labels-idx1-ubyte"),
        "test": ("FashionMNIST/raw/t10k-images-idx3-ubyte", "FashionMNIST/raw/t10k-labels-idx1-ubyte"),
    },
}
"""The files torchvision reads for each split, relative to the data root (what the fingerprint hashes)."""
SPLIT_SIZES = {"usps": {"train": 7291, "test": 2007}, "fashion_mnist": {"train": 60000, "test": 10000}}
"""The official number of samples per split; a file holding another number is refused."""
_IDX_HEADER = {"images": 16, "labels": 8}  # bytes before the data in an idx file
_IDX_ITEM = {"images": 28 * 28, "labels": 1}


class DatasetError(RuntimeError):
    """A dataset cannot be used; the message names the dataset, the file and what to do."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset files are missing and could not be downloaded."""


class DatasetDamagedError(DatasetError):
    """A dataset file is present but unreadable, truncated or of the wrong size."""


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
    fingerprint: str = ""

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


def _damaged(name: str, path: Path, what: str) -> DatasetDamagedError:
    return DatasetDamagedError(
        f"dataset {name!r}: file {path} {what}. The file is damaged or truncated: replace it with an intact copy "
        f"(or delete it so that torchvision downloads it again where there is internet).")


def _check_idx_sizes(name: str, root: Path, split: str) -> None:
    """Fashion-MNIST's idx files have a known size: name the file that is short (or long) before reading it."""
    if name != "fashion_mnist":
        return
    n = SPLIT_SIZES[name][split]
    for rel in SPLIT_FILES[name][split]:
        kind = "images" if "images" in rel else "labels"
        expected = _IDX_HEADER[kind] + n * _IDX_ITEM[kind]
        size = (root / rel).stat().st_size
        if size != expected:
            raise _damaged(name, root / rel, f"has {size:,} bytes where the {split} split's {n:,} {kind} take "
                                             f"{expected:,}")


def _read_split(name: str, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a split whose files are all present; any failure names the file and what is wrong with it."""
    _check_idx_sizes(name, root, split)
    files = [root / rel for rel in SPLIT_FILES[name][split]]
    try:
        images, labels = _raw_split(name, root, split == "train", download=False)
    except Exception as err:  # noqa: BLE001 - EOFError, OSError, ValueError, RuntimeError from the readers
        where = files[0] if len(files) == 1 else " or ".join(map(str, files))
        raise _damaged(name, Path(where), f"could not be read ({type(err).__name__}: {err})") from None
    n, expected = int(images.shape[0]), SPLIT_SIZES[name][split]
    if n != expected or int(labels.shape[0]) != n:
        raise _damaged(name, files[0], f"holds {n:,} {split} samples where the official split has {expected:,}")
    return images, labels


def _load_split(name: str, root: Path, train: bool, download: bool | None):
    """A split from ``root``; downloads missing files when ``download`` allows (never creating ``root`` for
    nothing: what a failed download created is removed)."""
    split = "train" if train else "test"
    missing = [rel for rel in SPLIT_FILES[name][split] if not (root / rel).is_file()]
    if not missing:
        return _read_split(name, root, split)
    reason = f"missing {', '.join(missing)}"
    if download is False:
        raise DatasetNotFoundError(_missing_message(name, root, f"{reason}; download disabled")) from None
    existed = set(root.iterdir()) if root.is_dir() else None
    try:
        _raw_split(name, root, train, download=True)
    except Exception as err:  # noqa: BLE001 - any download failure becomes one clear message
        if existed is None:
            shutil.rmtree(root, ignore_errors=True)
        else:
            for created in set(root.iterdir()) - existed:
                shutil.rmtree(created, ignore_errors=True) if created.is_dir() else created.unlink()
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DatasetNotFoundError(_missing_message(name, root, f"{reason}; download failed: {message}")) from None
    return _read_split(name, root, split)


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    """sha256 of a file, memoised by (path, size, mtime): each data file is hashed once per process."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def dataset_fingerprint(name: str, root: str | os.PathLike | None = None) -> str:
    """16 hex digits identifying a dataset's content: sha256 over the relative path, size and sha256 of every file
    torchvision reads for it (independent of where the root lies). Raises DatasetNotFoundError if one is missing."""
    canonical = canonical_dataset_name(name)
    path = Path(root).expanduser().resolve() if root is not None else data_root()
    files = {}
    for split in ("train", "test"):
        for rel in SPLIT_FILES[canonical][split]:
            if not (path / rel).is_file():
                raise DatasetNotFoundError(_missing_message(canonical, path, f"missing {rel}")) from None
            files[rel] = [(path / rel).stat().st_size, _file_sha256(path / rel)]
    payload = json.dumps({"dataset": canonical, "files": files}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


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
    return Dataset(name, train_x, train_y, test_x, test_y, mean, std, str(path), dataset_fingerprint(name, path))


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
        except DatasetError as err:
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
            self._perm = torch.randperm(self.n, generator=gen, device=gen.device)  # on the CPU, whatever the run's
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
