"""Labeled images for training: a prefix of class folders, or a table of image URIs; the channels and the
per-channel normalization fitted on the train split.

Class folders are the ImageFolder layout: `<prefix>/<label>/<file>` (deeper folders inside a class folder
belong to that class). Nothing is copied: the splits are lists of URIs and labels, and images are read where
they are, in training as in scoring.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from maas.modules import images, storage
from maas.modules.errors import InputError
from maas.modules.images import ImageSpec

URI_COLUMN = "uri"
Channels = Literal["auto", "grayscale", "rgb"]


def is_class_folders(uri: str) -> bool:
    """Whether `uri` is a folder (not one table file) with images in it: the class-folder layout."""
    return any(images.is_image(o.uri) for o in storage.list_folder(uri))


def class_folders(prefix: str, target: str, min_class_images: int) -> tuple[pd.DataFrame, str]:
    """One row per image under `prefix` (columns `uri` and `target`, the class folder's name), and an etag of the
    listing (the dataset's version: it changes when any image is added, removed or rewritten).

    One-line InputErrors for no images, images outside class folders, a single class, and a class with fewer
    than `min_class_images` images."""
    listed = [o for o in storage.list_folder(prefix) if images.is_image(o.uri)]
    if not listed:
        suffixes = ", ".join(s.lstrip(".") for s in images.IMAGE_SUFFIXES)
        raise InputError(f"{prefix}: no image files ({suffixes}) under this prefix")
    keys = [storage.relative_key(prefix, o.uri) for o in listed]
    loose = [key for key in keys if "/" not in key]
    if loose:
        raise InputError(
            f"{prefix}: {len(loose)} image(s) directly under the prefix (e.g. {loose[0]!r}); put each image in a "
            "folder named for its class: <prefix>/<label>/<file>"
        )
    frame = pd.DataFrame({URI_COLUMN: [o.uri for o in listed], target: [key.split("/", 1)[0] for key in keys]})
    counts = frame[target].value_counts().sort_index()
    if len(counts) < 2:
        raise InputError(f"{prefix}: one class folder ({counts.index[0]!r}); classification needs at least 2")
    few = counts[counts < min_class_images]
    if len(few):
        more = f"; {len(few) - 1} more class(es) are short" if len(few) > 1 else ""
        raise InputError(
            f"{prefix}: class folder {few.index[0]!r} has {few.iloc[0]} image(s); each class needs at least "
            f"{min_class_images} (min_class_images){more}"
        )
    listing = "\n".join(f"{o.uri} {o.etag}" for o in listed).encode()
    return frame, hashlib.sha256(listing).hexdigest()


def resolve_uris(uris: pd.Series, table_uri: str) -> pd.Series:
    """Image URIs of a table, with relative paths taken relative to the table's folder."""
    folder = table_uri.rsplit("/", 1)[0]
    relative = ~uris.str.contains("://", regex=False) & ~uris.str.startswith("/")
    return uris.where(~relative, folder + "/" + uris.str.lstrip("./"))


def fit_image_spec(
    train_uris: Sequence[str], column: str, size: int, channels: Channels, sample: int, seed: int
) -> ImageSpec:
    """Channels and per-channel mean/std (0-255 scale) from the train split's decoded pixels: every train
    image, or a seeded sample of `sample` of them. `auto` channels: grayscale when every image of that sample is
    gray (all three channels equal after conversion to RGB, whatever the file's mode), else RGB."""
    rng = np.random.default_rng(seed)
    chosen = list(train_uris) if len(train_uris) <= sample else list(rng.choice(train_uris, sample, replace=False))
    rgb = ImageSpec(column=column, size=size, channels=3, mean=[0.0] * 3, std=[1.0] * 3)
    pixels, rejected, reasons = images.read_pixels(chosen, rgb)
    if rejected.any():
        raise InputError(f"training image {reasons[0]} ({int(rejected.sum())} of {len(chosen)} read like this)")
    planes = pixels.reshape(len(chosen), 3, size * size)
    gray = bool((planes[:, 0] == planes[:, 1]).all() and (planes[:, 1] == planes[:, 2]).all())
    n_channels = 1 if channels == "grayscale" or (channels == "auto" and gray) else 3
    values = planes[:, :1] if n_channels == 1 else planes
    if n_channels == 1 and not gray:  # asked for grayscale of color images: decode as scoring will
        gray_spec = rgb.model_copy(update={"channels": 1, "mean": [0.0], "std": [1.0]})
        values = images.read_pixels(chosen, gray_spec)[0].reshape(len(chosen), 1, size * size)
    mean = values.astype(np.float64).mean(axis=(0, 2))
    std = values.astype(np.float64).std(axis=(0, 2))
    return ImageSpec(
        column=column,
        size=size,
        channels=n_channels,
        mean=[float(m) for m in mean],
        std=[float(s) if s > 1e-6 else 1.0 for s in std],
    )
