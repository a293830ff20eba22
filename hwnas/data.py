"""Datasets for search and training: deterministic train/val/test splits and their loaders.

``load_data(name)`` understands:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, no download),
  scaled to [0, 1], upsampled bilinearly to 32x32 (or ``resolution``), grey copied to 3 channels,
  normalized with the training split's mean/std; held in memory as tensors. The CPU smoke dataset.
- ``cifar10`` / ``cifar100``: torchvision's python-pickle CIFAR under ``root`` (default
  ``$HWNAS_DATA`` or ``~/.cache/hwnas/data``). Train and val come from CIFAR's train set (val carved
  out deterministically), test is CIFAR's test set. Train gets the standard augmentation (random
  crop 32 with 4 padding, horizontal flip); val/test none. ``download=True`` fetches through
  torchvision, which checks the archive's md5; loading then only checks that the files are present
  (so a locally written CIFAR-format directory loads too).
- any directory: an ImageFolder (one subfolder per class), or a directory with ``train/`` and
  optional ``val/`` / ``test/`` ImageFolders; images resized to ``resolution`` (default 224),
  normalized with the ImageNet mean/std, no augmentation. Missing val/test are carved out of train.

Splits carved out of a set are stratified by class and depend only on ``seed`` (and the fractions).
Every split dataset has an ``indices`` attribute: its sample indices in the set it was carved from.
Problems (unknown name, data absent, download failing) raise ``DataError`` with a one-line message
naming the dataset, the directory and the fix.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

BUILTIN = ("digits", "cifar10", "cifar100")
CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DataError(ValueError):
    """A dataset that cannot be loaded; the message names the dataset, the directory and the fix."""


@dataclass
class DataSplits:
    """Train/val/test datasets yielding ``(float tensor C x H x W, int label)``."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    resolution: int
    channels: int = 3
    name: str = ""


def default_root() -> Path:
    """``$HWNAS_DATA`` if set, else ``~/.cache/hwnas/data``."""
    return Path(os.environ.get("HWNAS_DATA") or Path.home() / ".cache" / "hwnas" / "data").expanduser()


# -- splitting ------------------------------------------------------------------------------------
def split_indices(labels, val_fraction: float, test_fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified (train, val, test) index arrays, sorted: from each class ``round(n * fraction)``
    samples go to test and to val, the rest to train. Depends only on the labels, fractions and seed."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * test_fraction))
        n_val = min(int(round(len(idx) * val_fraction)), len(idx) - n_test)
        test.append(idx[:n_test])
        val.append(idx[n_test:n_test + n_val])
        train.append(idx[n_test + n_val:])
    return tuple(np.sort(np.concatenate(part)).astype(np.int64) if part else np.zeros(0, np.int64)
                 for part in (train, val, test))


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) "
                        "and sum to less than 1")


class TensorSplit(Dataset):
    """In-memory images ``x`` (N, C, H, W) and labels ``y``; ``indices`` into the source set."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, indices: np.ndarray):
        self.x, self.y, self.indices = x, y, indices

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


class TransformSplit(Dataset):
    """The samples ``indices`` of ``base`` (which yields ``(PIL image, label)``) through ``transform``."""

    def __init__(self, base: Dataset, indices, transform):
        self.base, self.indices, self.transform = base, np.asarray(indices, dtype=np.int64), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img, label = self.base[int(self.indices[i])]
        return self.transform(img), int(label)


# -- digits ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _digits_images(res: int) -> tuple[torch.Tensor, np.ndarray]:
    """The 1797 digits in [0, 1], upsampled bilinearly to ``res`` x ``res``: (N, 1, res, res), labels.
    Cached: callers must not modify the tensor in place."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    return F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False), digits.target


def _load_digits(seed: int, val_fraction: float, test_fraction: float, resolution: int | None) -> DataSplits:
    res = int(resolution or 32)
    x, target = _digits_images(res)
    y = torch.from_numpy(target.astype(np.int64))
    parts = split_indices(target, val_fraction, test_fraction, seed)
    train_x = x[torch.from_numpy(parts[0])]
    mean, std = train_x.mean(), train_x.std().clamp_min(1e-6)  # grey: the same for the 3 channels
    splits = []
    for p in parts:
        idx = torch.from_numpy(p)
        splits.append(TensorSplit(((x[idx] - mean) / std).expand(-1, 3, -1, -1).contiguous(), y[idx], p))
    return DataSplits(*splits, num_classes=10, resolution=res, name="digits")


# -- CIFAR ----------------------------------------------------------------------------------------
def _cifar_class(name: str):
    """torchvision's CIFAR class with presence-only file checks (md5 None: ``check_integrity`` then
    only tests that the file exists). torchvision verifies the archive's md5 when it downloads."""
    from torchvision import datasets

    base = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    return type(f"Local{base.__name__}", (base,), {
        "train_list": [[f, None] for f, _ in base.train_list],
        "test_list": [[f, None] for f, _ in base.test_list],
        "meta": {**base.meta, "md5": None},
    })


def _load_cifar(name: str, root: Path, seed: int, val_fraction: float, resolution: int | None,
                download: bool) -> DataSplits:
    from torchvision import transforms as T

    cls = _cifar_class(name)
    folder = root / cls.base_folder
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    where = f"pass root= or set HWNAS_DATA to a directory holding {cls.base_folder}/"
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and download:
        from torchvision.datasets import cifar as tv_cifar

        try:  # torchvision's own downloader: checks the archive's md5, then extracts it
            tv_cifar.download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
        except Exception as e:  # network, disk, bad archive: all end the same way for the user
            first_line = (str(e).splitlines() or [""])[0]
            raise DataError(f"{name}: download into {root} failed ({type(e).__name__}: {first_line}); "
                            f"check the internet connection, or {where}") from None
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{name} not found in {folder} (missing {', '.join(missing)}); "
                        f"run with download=True (needs internet), or {where}")
    try:
        train_set = cls(str(root), train=True)
        test_set = cls(str(root), train=False)
    except Exception as e:
        first_line = (str(e).splitlines() or [""])[0]
        raise DataError(f"{name} in {folder} could not be read ({type(e).__name__}: {first_line}); delete it "
                        f"and run with download=True") from None
    res = int(resolution or 32)
    resize = [T.Resize((res, res))] if res != 32 else []
    norm = [T.ToTensor(), T.Normalize(CIFAR_MEAN[name], CIFAR_STD[name])]
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *resize, *norm])
    eval_tf = T.Compose([*resize, *norm])
    tr, va, _ = split_indices(train_set.targets, val_fraction, 0.0, seed)
    return DataSplits(TransformSplit(train_set, tr, train_tf), TransformSplit(train_set, va, eval_tf),
                      TransformSplit(test_set, np.arange(len(test_set)), eval_tf),
                      num_classes=len(train_set.classes), resolution=res, name=name)


# -- ImageFolder ----------------------------------------------------------------------------------
def _image_folder(path: Path, name: str):
    from torchvision import datasets

    try:
        return datasets.ImageFolder(str(path))
    except (FileNotFoundError, RuntimeError) as e:
        why = " ".join(str(e).split())
        raise DataError(f"{name}: {path} is not an image folder ({why}); expected one subfolder of images "
                        f"per class, or train/ [val/] [test/] folders of them") from None


def _load_folder(path: Path, seed: int, val_fraction: float, test_fraction: float,
                 resolution: int | None) -> DataSplits:
    from torchvision import transforms as T

    name = str(path)
    res = int(resolution or 224)
    tf = T.Compose([T.Resize((res, res)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    if (path / "train").is_dir():
        train_set = _image_folder(path / "train", name)
        extra = {s: _image_folder(path / s, name) for s in ("val", "test") if (path / s).is_dir()}
        for s, ds in extra.items():
            if ds.classes != train_set.classes:
                raise DataError(f"{name}: the classes of {path / s} ({', '.join(ds.classes)}) differ from "
                                f"those of {path / 'train'} ({', '.join(train_set.classes)}); use the same subfolders")
        tr, va, te = split_indices(train_set.targets, 0.0 if "val" in extra else val_fraction,
                                   0.0 if "test" in extra else test_fraction, seed)
        val = (TransformSplit(extra["val"], np.arange(len(extra["val"])), tf) if "val" in extra
               else TransformSplit(train_set, va, tf))
        test = (TransformSplit(extra["test"], np.arange(len(extra["test"])), tf) if "test" in extra
                else TransformSplit(train_set, te, tf))
    else:
        train_set = _image_folder(path, name)
        tr, va, te = split_indices(train_set.targets, val_fraction, test_fraction, seed)
        val, test = TransformSplit(train_set, va, tf), TransformSplit(train_set, te, tf)
    return DataSplits(TransformSplit(train_set, tr, tf), val, test, num_classes=len(train_set.classes),
                      resolution=res, name=name)


# -- public ---------------------------------------------------------------------------------------
def load_data(name: str = "digits", *, root: str | os.PathLike | None = None, seed: int = 0,
              val_fraction: float = 0.2, test_fraction: float = 0.2, resolution: int | None = None,
              download: bool = False) -> DataSplits:
    """Load dataset ``name`` (see the module docstring) split into train/val/test.

    ``val_fraction``/``test_fraction`` are fractions of the set they are carved from (CIFAR's test
    set is fixed, so ``test_fraction`` does not apply to it); ``resolution`` defaults to 32 for
    digits/CIFAR and 224 for image folders.
    """
    _check_fractions(val_fraction, test_fraction)
    if resolution is not None and (not isinstance(resolution, int) or resolution < 8):
        raise DataError(f"resolution={resolution!r} must be an integer >= 8")
    key = str(name).lower()
    if key == "digits":
        return _load_digits(seed, val_fraction, test_fraction, resolution)
    if key in ("cifar10", "cifar100"):
        base = Path(root).expanduser() if root is not None else default_root()
        return _load_cifar(key, base, seed, val_fraction, resolution, download)
    path = Path(str(name)).expanduser()
    if path.is_dir():
        return _load_folder(path, seed, val_fraction, test_fraction, resolution)
    raise DataError(f"unknown dataset {name!r}: use one of {', '.join(BUILTIN)}, or a directory of class "
                    f"subfolders (ImageFolder) or with train/ [val/] [test/] ImageFolders")


def make_loaders(splits: DataSplits, batch_size: int, *, seed: int = 0, workers: int = 0
                 ) -> tuple[DataLoader, DataLoader, DataLoader]:
    """(train, val, test) loaders; train is shuffled by a generator seeded with ``seed``."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    common = {"batch_size": batch_size, "num_workers": workers, "persistent_workers": workers > 0,
              "pin_memory": torch.cuda.is_available()}
    gen = torch.Generator().manual_seed(seed)
    return (DataLoader(splits.train, shuffle=True, generator=gen, **common),
            DataLoader(splits.val, shuffle=False, **common),
            DataLoader(splits.test, shuffle=False, **common))
