"""Decoding images as training and scoring both do: any format and mode in, the model's channels and size out."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maas.modules import images
from maas.modules.errors import InputError
from maas.modules.images import ImageSpec
from maas.modules.preprocess import FeatureSpec

GRAY = ImageSpec(size=8, channels=1, mean=[0.0], std=[1.0])
RGB = ImageSpec(size=8, channels=3, mean=[0.0] * 3, std=[1.0] * 3)


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF"])
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
def test_every_format_and_mode_becomes_the_models_channels_and_size(fmt: str, mode: str) -> None:
    if fmt == "JPEG" and mode in ("RGBA", "P"):
        pytest.skip("JPEG stores neither alpha nor a palette")
    image = Image.new("RGB", (20, 12), (200, 40, 10)).convert(mode)
    data = encoded(image, fmt)
    gray, rgb = images.decode(data, GRAY, "x"), images.decode(data, RGB, "x")
    assert gray.shape == (64,) and gray.dtype == np.uint8
    assert rgb.shape == (192,)
    red, green = rgb[:64], rgb[64:128]  # channels first
    if mode == "L":
        assert (red == green).all()
    else:
        assert red.mean() > 150 and green.mean() < 90, "channels first, in RGB order"


def test_the_first_frame_of_a_multi_frame_tiff() -> None:
    frames = [Image.new("L", (8, 8), value) for value in (10, 250)]
    out = io.BytesIO()
    frames[0].save(out, format="TIFF", save_all=True, append_images=frames[1:])
    assert (images.decode(out.getvalue(), GRAY, "x") == 10).all()


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "empty file"),
        (b"label,x\n1,2\n", "not a decodable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not a decodable"),
    ],
)
def test_what_is_not_an_image_gets_a_reason_naming_it(data: bytes, says: str) -> None:
    with pytest.raises(InputError, match=f"s3://b/k.png: {says}"):
        images.decode(data, GRAY, "s3://b/k.png")


def test_a_truncated_image_is_refused() -> None:
    whole = encoded(Image.effect_noise((64, 64), 50), "PNG")
    with pytest.raises(InputError, match="not a decodable image"):
        images.decode(whole[: len(whole) // 2], GRAY, "k")


def test_a_table_of_image_uris_encodes_and_rejects_row_by_row(tmp_path) -> None:  # noqa: ANN001
    good = tmp_path / "a.png"
    Image.new("L", (30, 30), 99).save(good)
    (tmp_path / "b.png").write_bytes(b"not an image")
    spec = FeatureSpec(target="label", task="classification", classes=[0, 1], image=GRAY)
    frame = pd.DataFrame({"uri": [(tmp_path / name).as_uri() for name in ("a.png", "b.png", "c.png")]})
    out = spec.encode_rows(frame, "table.csv")
    assert spec.feature_names == ["uri"] and spec.width == 64
    assert out.features.shape == (3, 64) and out.features.dtype == np.float32
    assert (out.features[0] == 99).all()
    assert out.rejected.tolist() == [False, True, True]
    assert "not a decodable image" in out.reasons[0] and "c.png" in out.reasons[1]
    with pytest.raises(InputError, match="missing feature column"):
        spec.encode_rows(pd.DataFrame({"path": ["x"]}), "table.csv")
