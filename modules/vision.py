"""Image networks: a small CNN or the classic MLP over flattened pixels, their augmentation and data module.

Both take the image model's input convention (`maas.modules.images`): raw pixel values 0-255 as float32,
flattened channels first, [N, C*H*W]. Their first module (`Normalize`) reshapes to [N, C, H, W] and applies the
train split's per-channel normalization, so the exported ONNX graph takes exactly what `images.decode` gives and
scoring needs nothing else. Augmentation is not part of the network: `ImageModule` applies it to training
batches only, on the training device, with torch's own `affine_grid`/`grid_sample` (torchvision cannot be
installed beside the CPU torch build here).
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from maas.modules import images, storage
from maas.modules.images import ImageSpec
from maas.modules.model import MLPConfig, TabularDataModule, TabularModule, mlp
from maas.modules.preprocess import FeatureSpec


class AugmentConfig(BaseModel):
    """Random transforms of training images (never of validation, test or scored ones), one affine per image."""

    enabled: bool = Field(True, description="Augment training images at all.")
    rotate_degrees: float = Field(10.0, ge=0, le=180, description="Random rotation within ± this many degrees.")
    translate: float = Field(0.1, ge=0, lt=0.5, description="Random shift up to this fraction of the size per axis.")
    scale: float = Field(0.1, ge=0, lt=1, description="Random zoom within 1 ± this.")
    crop_padding: int = Field(
        0, ge=0, description="Random crops: pad by this many pixels, take a window of the original size at random."
    )
    flip: bool = Field(False, description="Random horizontal flips (off by default: a flipped digit or letter is "
                       "another symbol).")  # fmt: skip


class VisionConfig(BaseModel):
    """The image network: a CNN (conv blocks, global average pooling, a linear classifier) or an MLP."""

    architecture: Literal["cnn", "mlp"] = Field(
        "cnn", description="cnn: conv blocks then a linear classifier; mlp: fully connected layers over the pixels."
    )
    channels: list[int] = Field(
        [16, 32, 64],
        min_length=1,
        description="cnn: output channels of each conv block (3x3 conv, batch norm, ReLU, 2x2 max-pool); "
        "one block per entry.",
    )
    hidden_sizes: list[int] = Field([128, 64], description="mlp: width of each hidden layer.")
    batch_norm: bool = Field(True, description="cnn: batch normalization in each block (folded into the conv at "
                             "export).")  # fmt: skip
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout before the classifier (cnn) or after each hidden "
                           "layer (mlp) while training.")  # fmt: skip
    augment: AugmentConfig = AugmentConfig()


class Normalize(nn.Module):
    """Raw pixels [N, C*H*W] (0-255) to normalized images [N, C, H, W]: the graph's first operations."""

    def __init__(self, image: ImageSpec) -> None:
        super().__init__()
        self.shape = (image.channels, image.size, image.size)
        self.register_buffer("mean", torch.tensor(image.mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("inv_std", 1 / torch.tensor(image.std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(-1, *self.shape) - self.mean) * self.inv_std


class ConvBlock(nn.Module):
    """3x3 conv (same padding), batch norm, ReLU, then 2x2 max-pool while the image is at least 2 pixels wide."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm)
        self.norm = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.norm(self.conv(x))))


class ConvNet(nn.Module):
    """Normalize, conv blocks, global average pooling, dropout, linear classifier (logits)."""

    def __init__(self, spec: FeatureSpec, config: VisionConfig) -> None:
        super().__init__()
        image = _image(spec)
        self.normalize = Normalize(image)
        blocks, width, side = [], image.channels, image.size
        for channels in config.channels:
            blocks.append(ConvBlock(width, channels, config.batch_norm, pool=side >= 2))
            width, side = channels, side // 2 if side >= 2 else side
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(width, spec.output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = F.adaptive_avg_pool2d(self.blocks(self.normalize(x)), 1).flatten(1)  # ONNX GlobalAveragePool
        return self.classifier(self.dropout(features))

    def linear_layers(self) -> list[nn.Linear]:
        return [self.classifier]


class PixelMLP(nn.Module):
    """Normalize, flatten, fully connected layers: the classic 784-128-64-10 network for 28x28 digits."""

    def __init__(self, spec: FeatureSpec, config: VisionConfig) -> None:
        super().__init__()
        self.normalize = Normalize(_image(spec))
        layers = MLPConfig(hidden_sizes=config.hidden_sizes, dropout=config.dropout)
        self.mlp = mlp(spec.width, layers, spec.output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.normalize(x).flatten(1))

    def linear_layers(self) -> list[nn.Linear]:
        return [m for m in self.mlp if isinstance(m, nn.Linear)]


def _image(spec: FeatureSpec) -> ImageSpec:
    if spec.image is None:
        raise ValueError("an image network needs a feature spec with an image")
    return spec.image


def build_net(spec: FeatureSpec, config: VisionConfig) -> ConvNet | PixelMLP:
    return ConvNet(spec, config) if config.architecture == "cnn" else PixelMLP(spec, config)


def multiply_adds(net: nn.Module, spec: FeatureSpec) -> int:
    """Multiply-adds per image in the conv and linear layers, counted on one image (the cost that, unlike measured
    speed, does not depend on the machine)."""
    total = 0

    def count(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output[0].numel() * per_output
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, spec.width))
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    return total


def parameter_count(net: nn.Module, nonzero: bool = False) -> int:
    """Trainable weights and biases (the normalization's buffers are not parameters)."""
    return sum(int((p != 0).sum()) if nonzero else p.numel() for p in net.parameters())


def augment(x: torch.Tensor, image: ImageSpec, config: AugmentConfig) -> torch.Tensor:
    """A random affine per image (rotation, zoom, shift, crop offset, flip), resampled bilinearly; what falls
    outside is 0 (black), like the padding of a random crop. Same shape and scale (raw pixels) as `x`."""
    n, device = len(x), x.device
    batch = x.reshape(n, image.channels, image.size, image.size).float()

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, device=device) * 2 - 1

    angle = uniform(n) * math.radians(config.rotate_degrees)
    zoom = 1 + uniform(n) * config.scale
    shift = uniform(n, 2) * config.translate * 2  # affine_grid's coordinates span 2 per image side
    if config.crop_padding:
        pixels = torch.randint(-config.crop_padding, config.crop_padding + 1, (n, 2), device=device)
        shift = shift + pixels * 2 / image.size
    flip = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0) if config.flip else torch.ones(n, device=device)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    rows = [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)]
    theta = torch.stack(rows, 1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    moved = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved.reshape(n, -1).to(x.dtype)


class ImageModule(TabularModule):
    """The tabular module's loss, metrics, optimizer and schedules around an image network; training batches are
    augmented on the device (validation and test batches, and the exported network, never are)."""

    def build_net(self, spec: FeatureSpec, model: dict) -> nn.Module:
        self.vision = VisionConfig.model_validate(model)
        return build_net(spec, self.vision)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.vision.augment.enabled:
            x = augment(x, _image(self.spec), self.vision.augment)
        return super().training_step((x, y), batch_idx)


class ImageLoader(BaseModel):
    """How training reads images: decoded once into memory, or in DataLoader worker processes."""

    in_memory_below: int = Field(
        100_000,
        ge=0,
        description="Splits with fewer images than this are decoded once, on threads, into memory (28x28 grayscale: "
        "784 bytes an image as uint8, 3 KB as float32): every epoch then reads tensors. Larger splits are read and "
        "decoded per batch in `workers` DataLoader processes.",
    )
    workers: int = Field(2, ge=0, description="DataLoader worker processes decoding images of the larger splits.")


class ImageFiles(Dataset):
    """Images read and decoded per item (in a DataLoader worker): for splits too large to hold in memory."""

    def __init__(self, uris: list[str], labels: np.ndarray, image: ImageSpec) -> None:
        self.uris, self.labels, self.image = uris, torch.from_numpy(labels), image

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        uri = self.uris[index]
        pixels = images.decode(storage.read_bytes(uri), self.image, uri)
        return torch.from_numpy(pixels.astype(np.float32)), self.labels[index]


class ImageDataModule(TabularDataModule):
    """The Parquet split lists (image URIs and labels) as datasets of raw pixels.

    Small splits are decoded once into memory, because then an epoch costs no decoding at all and a
    28x28 image is 3 KB as float32 (60,000 of them: 188 MB); decoding per batch in worker processes costs a
    Pillow decode per image per epoch, worth it only when the split would not fit. `ImageLoader` draws the line.
    """

    def __init__(
        self, spec: FeatureSpec, splits: dict[str, str], batch_size: int, seed: int, loader: ImageLoader | None = None
    ) -> None:
        super().__init__(spec, splits, batch_size, seed)
        self.loader = loader or ImageLoader()

    def tensors(self, frame: pd.DataFrame, source: str) -> Dataset:
        if len(frame) < self.loader.in_memory_below:
            return super().tensors(frame, source)
        image = _image(self.spec)
        labels = self.spec.encode_target(frame[self.spec.target])
        return ImageFiles(frame[image.column].astype(str).tolist(), labels, image)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        loader = super()._loader(name, shuffle)
        if isinstance(self.datasets[name], TensorDataset) or not self.loader.workers:
            return loader
        return DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=shuffle, generator=loader.generator,
                          drop_last=loader.drop_last, num_workers=self.loader.workers,
                          persistent_workers=True)  # fmt: skip

    def with_datasets(self, datasets: dict[str, Dataset], batch_size: int | None = None) -> ImageDataModule:
        other = copy.copy(self)
        other.batch_size, other.datasets = batch_size or self.batch_size, dict(datasets)
        return other
