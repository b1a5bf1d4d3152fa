"""Datasets as the paper prepares them (sizes, statistics, normalisation) and the seeded batch sampler."""

import numpy as np
import pytest
import torch

from chaosnb.data import (
    BatchSampler,
    DatasetNotFoundError,
    canonical_dataset_name,
    load_dataset,
    sampler_for,
)


def test_usps_sizes_and_classes(data_root):
    ds = load_dataset("usps", data_root)
    assert (ds.n_train, ds.n_test) == (7291, 2007)
    assert ds.train_x.shape[1:] == (1, 16, 16) and ds.train_x.dtype == torch.float32
    counts = torch.bincount(ds.train_y, minlength=10).tolist()
    assert counts == [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]
    assert sorted(set(ds.test_y.tolist())) == list(range(10))


def test_fashion_mnist_sizes_resize_and_raw_mean(data_root):
    ds = load_dataset("fashion_mnist", data_root)
    assert (ds.n_train, ds.n_test) == (60000, 10000)
    assert ds.train_x.shape[1:] == (1, 16, 16)
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    # the [0, 1] pixel mean of the train split (0.2860 at 28x28) survives the resize to 16x16
    assert ds.mean == pytest.approx(0.2860, abs=1e-3)


def test_fashion_mnist_native_pixel_mean(data_root):
    import torchvision

    raw = torchvision.datasets.FashionMNIST(str(data_root), train=True, download=False)
    assert float(raw.data.double().mean() / 255) == pytest.approx(0.2860, abs=5e-5)


@pytest.mark.parametrize("name", ["usps", "fashion_mnist"])
def test_normalisation_uses_one_scalar_from_train_split(data_root, name):
    ds = load_dataset(name, data_root)
    assert float(ds.train_x.double().mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(ds.train_x.double().std()) == pytest.approx(1.0, abs=1e-5)
    raw_test = ds.unnormalise(ds.test_x)
    assert float(raw_test.min()) >= -1e-5 and float(raw_test.max()) <= 1 + 1e-5
    assert 0.0 < ds.std < 1.0 and 0.0 < ds.mean < 1.0


def test_usps_statistics(data_root):
    ds = load_dataset("usps", data_root)
    assert ds.mean == pytest.approx(0.24688, abs=1e-4)
    assert ds.std == pytest.approx(0.29888, abs=1e-4)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="usps, fashion_mnist"):
        canonical_dataset_name("cifar10")


def test_missing_data_error_names_dataset_path_and_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("CHAOSNB_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("usps", download=False)
    message = str(err.value)
    assert "usps" in message and str(tmp_path) in message and "CHAOSNB_DATA" in message


def test_sampler_is_a_pure_function_of_seed_n_batch():
    a, b = BatchSampler(103, 8, seed=7), BatchSampler(103, 8, seed=7)
    seq_a = [a.indices(t).tolist() for t in range(40)]
    # query b in a scrambled order: each batch depends on its step only
    for t in [39, 0, 14, 13, 26, 5]:
        assert b.indices(t).tolist() == seq_a[t]
    assert BatchSampler(103, 8, seed=8).indices(0).tolist() != seq_a[0]


def test_sampler_epochs_cover_every_sample_once_with_partial_last_batch():
    s = BatchSampler(103, 8, seed=1)
    assert s.steps_per_epoch == 13
    for epoch in range(3):
        idx = torch.cat([s.indices(epoch * 13 + i) for i in range(13)])
        assert sorted(idx.tolist()) == list(range(103))
    assert len(s.indices(12)) == 103 - 12 * 8
    assert not torch.equal(s.permutation(0), s.permutation(1))


def test_sampler_resume_matches_uninterrupted(data_root):
    ds = load_dataset("usps", data_root)
    full = sampler_for(ds, 8, 42)
    first = [full.batch(ds, t)[1] for t in range(1000, 1010)]
    resumed = sampler_for(ds, 8, 42)
    again = [resumed.batch(ds, t)[1] for t in range(1000, 1010)]
    assert all(torch.equal(p, q) for p, q in zip(first, again, strict=True))
    assert full.steps_per_epoch == 912  # 40 epochs = 36,480 steps, as in the paper


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError):
        BatchSampler(0, 8, 0)
    with pytest.raises(ValueError):
        BatchSampler(10, 8, 0).indices(-1)
    assert np.all(np.diff(BatchSampler(10, 3, 0).permutation(0).sort().values.numpy()) == 1)
