"""Images as model input: the decoding and resizing that stay outside an image model's ONNX graph.

An image model's input is one column of image URIs (a table's `--image-column`, or the object URI of an
image file dropped in the bucket). Pillow decodes each image (PNG, JPEG, WebP, BMP, TIFF's first frame; any
mode), converts it to the model's channels and resizes it to a square of `size` pixels: that much runs in
Python, with the same code in training and scoring, and the card records how (`ImageSpec`). The network
then takes the raw pixel values, 0-255 as float32, flattened channels first (C x H x W per row), so the
engines and the scoring pipeline see an ordinary feature matrix; the normalization fitted on the train
split is the graph's first operation.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field

from maas.modules import storage
from maas.modules.errors import InputError, ObjectNotFound

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# Decoding errors Pillow raises for a file that is not an image, is truncated or is too large to decode.
_UNDECODABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageSpec(BaseModel):
    """How an image becomes the model's input, recorded in the card so scoring decodes as training did."""

    column: str = Field("uri", description="The column of image URIs (for image files: the object's URI).")
    size: int = Field(28, ge=4, le=512, description="Images are resized to size x size pixels.")
    channels: Literal[1, 3] = Field(description="1: converted to grayscale (Pillow mode L); 3: to RGB.")
    mean: list[float] = Field(
        description="Per-channel mean of the train split's pixels (0-255), folded into the graph."
    )
    std: list[float] = Field(description="Per-channel standard deviation of the train split's pixels (0-255).")

    @property
    def width(self) -> int:
        """Values per image in the feature matrix: channels x size x size."""
        return self.channels * self.size * self.size


def is_image(uri: str) -> bool:
    return uri.lower().endswith(IMAGE_SUFFIXES)  # called for every listed file: no path parsing


def decode(data: bytes, spec: ImageSpec, source: str) -> np.ndarray:
    """The image's pixels as uint8, channels first, flattened; InputError naming `source` when the bytes are
    empty, not an image, or truncated."""
    if not data:
        raise InputError(f"{source}: empty file, not an image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.seek(0)  # a multi-frame TIFF or GIF: its first frame
            converted = image.convert("L" if spec.channels == 1 else "RGB")
            resized = converted.resize((spec.size, spec.size), Image.Resampling.BILINEAR)
            pixels = np.asarray(resized, dtype=np.uint8)
    except _UNDECODABLE as exc:
        raise InputError(f"{source}: not a decodable image ({type(exc).__name__}: {exc})") from exc
    if spec.channels == 3:
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels).reshape(-1)


def read_pixels(uris: Sequence[str], spec: ImageSpec, threads: int = 8) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pixels (float32, one row per URI, C x H x W values), which rows could not be read or decoded, and why
    (in row order). Reads and decodes on `threads` threads: fetching releases the GIL, and so does most of
    Pillow's decoding."""

    def one(uri: str) -> np.ndarray | str:
        try:
            return decode(storage.read_bytes(uri), spec, uri)
        except (InputError, ObjectNotFound) as exc:
            return str(exc)

    out = np.zeros((len(uris), spec.width), dtype=np.float32)
    rejected = np.zeros(len(uris), dtype=bool)
    reasons: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(uris)))) as pool:
        for row, result in enumerate(pool.map(one, uris)):
            if isinstance(result, str):
                rejected[row] = True
                reasons.append(result)
            else:
                out[row] = result
    return out, rejected, reasons
