"""Fashion-MNIST for the vision examples and tests: the Debian IDX files offline, ``fashion_mnist`` from the Hub
otherwise. Images come back as uint8 arrays ``(N, 28, 28)`` with int64 labels."""
from __future__ import annotations

import gzip
import numbers
import os

import numpy as np
import torch

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist/"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
_IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
              "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def load_fashion_mnist(split: str = "train", source: str = "auto", path: str | None = None,
                       limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of one split (``"train"``: 60k, ``"test"``: 10k), the first ``limit`` if given.

    ``source="idx"`` reads the IDX files in ``path`` (default the Debian package's folder),
    ``"hub"`` loads ``fashion_mnist`` with ``datasets``, ``"auto"`` uses the IDX files when present.
    """
    if split not in _IDX_FILES:
        raise ValueError(f"split={split!r} must be 'train' or 'test'.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 0):
        raise ValueError(f"limit={limit!r} must be an int >= 0 (or None for every image).")
    limit = None if limit is None else int(limit)
    if source not in ("auto", "idx", "hub"):
        raise ValueError(f"source={source!r} must be 'auto', 'idx' or 'hub'.")
    folder = path or FASHION_MNIST_DIR
    if source == "hub" or (source == "auto" and path is None and not os.path.isdir(folder)):
        images, labels = _from_hub(split)
    else:
        images, labels = _from_idx(folder, split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def _from_idx(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_file, label_file = (os.path.join(folder, f) for f in _IDX_FILES[split])
    if not (os.path.isfile(image_file) and os.path.isfile(label_file)):
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files not found in {folder!r} (looked for {os.path.basename(image_file)}); "
            "install them with `apt-get install -y dataset-fashion-mnist`, or use source='hub'.")
    with gzip.open(image_file) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(label_file) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return images, labels


def _from_hub(split: str) -> tuple[np.ndarray, np.ndarray]:
    import datasets

    try:
        ds = datasets.load_dataset("fashion_mnist", split=split)
    except Exception as err:  # offline, no cache: say how to get the local copy
        raise FileNotFoundError(
            f"could not load fashion_mnist from the Hub ({type(err).__name__}: {err}); offline, install the IDX "
            "files with `apt-get install -y dataset-fashion-mnist`.") from err
    images = np.stack([np.asarray(im, dtype=np.uint8) for im in ds["image"]])
    return images, np.asarray(ds["label"], dtype=np.int64)


def to_pixel_values(images: np.ndarray, size: int | None = None, channels: int = 1,
                    mean: float = FASHION_MNIST_MEAN, std: float = FASHION_MNIST_STD) -> torch.Tensor:
    """uint8 ``(N, H, W)`` images -> normalised float ``(N, channels, size, size)`` tensor for the models."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, height, width), got {images.shape}.")
    if images.dtype != np.uint8:  # floats in [0, 1] would be divided by 255 again, into a near-constant image
        raise TypeError(f"images must be uint8 (0-255), got {images.dtype}; for floats in [0, 1] pass "
                        "(images * 255).round().astype(np.uint8).")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - mean) / std
    return x.repeat(1, channels, 1, 1) if channels != 1 else x


class ImageClassificationDataset(torch.utils.data.Dataset):
    """``{"pixel_values", "labels"}`` items from tensors, the format ``transformers.Trainer`` feeds the models."""

    def __init__(self, pixel_values: torch.Tensor, labels):
        values = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if values.dtype == bool or not (np.issubdtype(values.dtype, np.integer) or (
                np.issubdtype(values.dtype, np.floating) and np.array_equal(values, np.round(values)))):
            raise ValueError(f"labels must be integer class ids, got dtype {values.dtype}"
                             + (f" (e.g. {values.flat[0].item()!r})" if values.size else "")
                             + "; map class names or fractional values to ids 0..num_labels-1 first.")
        labels = torch.as_tensor(values.astype(np.int64))
        if len(pixel_values) != len(labels):
            raise ValueError(f"{len(pixel_values)} images but {len(labels)} labels; give one label per image.")
        self.pixel_values, self.labels = pixel_values, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.pixel_values[i], "labels": self.labels[i]}
