"""hwnas.data: digits, a fake CIFAR-10 in torchvision's pickle format, ImageFolders, and the loaders."""
from __future__ import annotations

import pickle
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hwnas.data import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, DataError, load_data, make_loaders


def _indices(splits):
    return [set(map(int, d.indices)) for d in (splits.train, splits.val, splits.test)]


# -- digits ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_data("digits", seed=0)


def test_digits_shapes_and_classes(digits):
    assert (digits.num_classes, digits.resolution, digits.channels, digits.name) == (10, 32, 3, "digits")
    x, y = digits.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert isinstance(y, int) and 0 <= y < 10
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert {int(y) for y in digits.train.y} == set(range(10))


def test_digits_splits_disjoint_stratified(digits):
    from sklearn.datasets import load_digits

    train, val, test = _indices(digits)
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(range(1797))
    target = load_digits().target
    for c in range(10):
        n = int((target == c).sum())
        assert sum(int(target[i] == c) for i in val) == round(n * 0.2)
        assert sum(int(target[i] == c) for i in test) == round(n * 0.2)
    assert [int(v) for v in digits.val.y] == [int(target[i]) for i in digits.val.indices]


def test_digits_deterministic_given_seed(digits):
    again = load_data("digits", seed=0)
    assert _indices(again) == _indices(digits)
    assert torch.equal(again.train.x, digits.train.x)
    other = load_data("digits", seed=1)
    assert _indices(other)[1] != _indices(digits)[1]


def test_digits_normalized_with_train_statistics(digits):
    from sklearn.datasets import load_digits

    x = digits.train.x
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4)
    # Known answer: rebuild one validation image from the raw 8x8 digit and the train statistics.
    raw = torch.from_numpy(load_digits().images.astype(np.float64) / 16.0).unsqueeze(1)
    up = F.interpolate(raw, size=(32, 32), mode="bilinear", align_corners=False)
    train_up = up[torch.as_tensor(digits.train.indices)]
    mean, std = train_up.mean(), train_up.std()
    i = int(digits.val.indices[5])
    expected = ((up[i] - mean) / std).expand(3, 32, 32).float()
    assert torch.allclose(digits.val[5][0], expected, atol=1e-4)


def test_digits_resolution_and_fractions():
    small = load_data("digits", resolution=16, val_fraction=0.1, test_fraction=0.3)
    assert small.resolution == 16 and small.train[0][0].shape == (3, 16, 16)
    assert abs(len(small.test) - 0.3 * 1797) < 10 and abs(len(small.val) - 0.1 * 1797) < 10
    with pytest.raises(DataError, match="val_fraction"):
        load_data("digits", val_fraction=0.5, test_fraction=0.5)


# -- CIFAR ----------------------------------------------------------------------------------------
def _write_fake_cifar10(root, per_batch=10, n_test=10):
    """torchvision's python format: data_batch_1..5, test_batch, batches.meta (pickled dicts)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f)
    train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    return train, train_labels, batches["test_batch"][0], batches["test_batch"][1]


def _normalized(row, name="cifar10"):
    x = torch.from_numpy(row.reshape(3, 32, 32).astype(np.float32) / 255.0)
    return (x - torch.tensor(CIFAR_MEAN[name]).view(3, 1, 1)) / torch.tensor(CIFAR_STD[name]).view(3, 1, 1)


@pytest.fixture
def fake_cifar(tmp_path):
    return tmp_path, _write_fake_cifar10(tmp_path)


def test_cifar10_from_local_files(fake_cifar):
    root, (train, train_labels, test, test_labels) = fake_cifar
    s = load_data("cifar10", root=root, seed=0, val_fraction=0.2)
    assert (s.num_classes, s.resolution, s.name) == (10, 32, "cifar10")
    assert (len(s.train), len(s.val), len(s.test)) == (40, 10, 10)
    tr, va, _ = _indices(s)
    assert not (tr & va) and tr | va == set(range(50))
    assert sorted(train_labels[i] for i in va) == list(range(10))  # stratified: one per class
    # val and test are not augmented: exact normalized pixels and labels.
    j = 3
    x, y = s.val[j]
    base = int(s.val.indices[j])
    assert y == train_labels[base]
    assert torch.allclose(x, _normalized(train[base]), atol=1e-6)
    x, y = s.test[7]
    assert y == test_labels[7] and torch.allclose(x, _normalized(test[7]), atol=1e-6)
    # train is augmented (random crop with padding 4, flip): same shape, not always the raw image.
    torch.manual_seed(0)
    raw = _normalized(train[int(s.train.indices[0])])
    outs = [s.train[0][0] for _ in range(8)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert any(not torch.allclose(o, raw) for o in outs)


def test_cifar10_root_from_env_and_no_download_when_present(fake_cifar, monkeypatch):
    root, _ = fake_cifar
    import torchvision.datasets.cifar as tv_cifar

    def offline(*a, **k):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    monkeypatch.setenv("HWNAS_DATA", str(root))
    s = load_data("cifar10", download=True, resolution=16)  # present: no download attempted
    assert len(s.test) == 10 and s.test[0][0].shape == (3, 16, 16)


def test_cifar_missing_raises_one_line_error(tmp_path):
    where = tmp_path / "nothing"
    with pytest.raises(DataError) as info:
        load_data("cifar10", root=where)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in msg
    assert "cifar10" in msg and str(where / "cifar-10-batches-py") in msg and "download=True" in msg
    with pytest.raises(DataError, match="cifar100.*cifar-100-python"):
        load_data("cifar100", root=where)


def test_cifar_download_failure_offline(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def offline(*a, **k):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as info:
        load_data("cifar10", root=tmp_path, download=True)
    msg = str(info.value)
    assert "\n" not in msg and "cifar10" in msg and str(tmp_path) in msg and "download" in msg
    assert "URLError" in msg


# -- ImageFolder ----------------------------------------------------------------------------------
COLORS = {"a_red": (255, 0, 0), "b_blue": (0, 0, 255)}


def _write_folder(root, per_class=5):
    from PIL import Image

    for cls, rgb in COLORS.items():
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (10 + i, 7), rgb).save(root / cls / f"{i}.png")


def _expected(rgb, res):
    x = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 255.0
    x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x.expand(3, res, res)


def test_image_folder_split_from_one_folder(tmp_path):
    _write_folder(tmp_path / "imgs")
    s = load_data(str(tmp_path / "imgs"), resolution=16, seed=0)
    assert (s.num_classes, s.resolution, s.channels) == (2, 16, 3)
    assert (len(s.train), len(s.val), len(s.test)) == (6, 2, 2)
    tr, va, te = _indices(s)
    assert not (tr & va or tr & te or va & te) and tr | va | te == set(range(10))
    for ds in (s.train, s.val, s.test):
        for k in range(len(ds)):
            x, y = ds[k]
            assert x.shape == (3, 16, 16)
            assert torch.allclose(x, _expected(list(COLORS.values())[y], 16), atol=1e-5)
    assert _indices(load_data(str(tmp_path / "imgs"), resolution=16, seed=0)) == [tr, va, te]
    assert load_data(str(tmp_path / "imgs")).train[0][0].shape == (3, 224, 224)  # default resolution


def test_image_folder_with_train_and_test_dirs(tmp_path):
    _write_folder(tmp_path / "ds" / "train", per_class=5)
    _write_folder(tmp_path / "ds" / "test", per_class=2)
    s = load_data(str(tmp_path / "ds"), resolution=8, val_fraction=0.2)
    assert (len(s.train), len(s.val), len(s.test)) == (8, 2, 4)  # val carved from train, test kept
    assert sorted(s.test[k][1] for k in range(4)) == [0, 0, 1, 1]
    (tmp_path / "ds" / "val" / "other").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "ds" / "val" / "other" / "0.png")
    with pytest.raises(DataError, match="classes"):
        load_data(str(tmp_path / "ds"))


def test_empty_folder_and_unknown_name(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not an image folder"):
        load_data(str(tmp_path / "empty"))
    with pytest.raises(DataError) as info:
        load_data("imagenet-nope")
    assert "digits, cifar10, cifar100" in str(info.value) and "'imagenet-nope'" in str(info.value)


# -- loaders --------------------------------------------------------------------------------------
def test_make_loaders(digits):
    train, val, test = make_loaders(digits, 64, seed=3)
    x, y = next(iter(train))
    assert x.shape == (64, 3, 32, 32) and y.dtype == torch.int64
    assert sum(len(b[1]) for b in val) == len(digits.val)
    first = lambda loader: next(iter(loader))[1].tolist()  # noqa: E731
    assert first(make_loaders(digits, 64, seed=3)[0]) == first(make_loaders(digits, 64, seed=3)[0])
    assert first(make_loaders(digits, 64, seed=3)[0]) != first(make_loaders(digits, 64, seed=4)[0])
    assert next(iter(val))[1].tolist() == [int(v) for v in digits.val.y[:64]]  # val keeps its order
    with pytest.raises(ValueError, match="batch_size"):
        make_loaders(digits, 0)
