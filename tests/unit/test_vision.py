"""Image training parts: class-folder layout and its errors, the networks, augmentation, channel pruning."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from maas.modules import demo, formats, image_data, pruning, storage, vision
from maas.modules.config import Settings
from maas.modules.errors import InputError
from maas.modules.images import ImageSpec
from maas.modules.pipeline import PipelineParams
from maas.modules.preprocess import FeatureSpec, PreprocessParams, run_preprocess
from maas.modules.train import TrainParams
from maas.modules.tune import TuneParams, search
from maas.modules.vision import AugmentConfig, ConvNet, ImageDataModule, ImageLoader, ImageModule, VisionConfig
from tests.conftest import write_shape_images

SIZE = 12


def spec(channels: int = 1, classes: int = 3, size: int = SIZE) -> FeatureSpec:
    image = ImageSpec(size=size, channels=channels, mean=[40.0] * channels, std=[60.0] * channels)
    return FeatureSpec(target="label", task="classification", classes=list(range(classes)), image=image)


def test_class_folders_are_detected_listed_and_split_as_uris(local_bucket: str) -> None:
    prefix = storage.join(local_bucket, "raw", "shapes")
    write_shape_images(prefix, per_class=10, size=SIZE)
    table = storage.join(local_bucket, "raw", "table.csv")
    formats.write_frame(pd.DataFrame({"x": [1, 2], "label": [0, 1]}), table)
    assert image_data.is_class_folders(prefix) and image_data.is_class_folders(prefix + "/")
    assert not image_data.is_class_folders(table)

    prep = run_preprocess(PreprocessParams(data_uri=prefix + "/", target="label", image_size=SIZE,
                                           output_uri=storage.join(local_bucket, "prep")))  # fmt: skip
    loaded = storage.read_model(prep.spec_uri, FeatureSpec)
    assert loaded.task == "classification" and loaded.classes == ["bar", "column", "diagonal"]
    assert loaded.image is not None and (loaded.image.size, loaded.image.channels) == (SIZE, 1)  # gray PNGs
    assert 30 < loaded.image.mean[0] < 120 and loaded.image.std[0] > 30
    train = formats.read_frame(prep.splits["train"])
    assert list(train.columns) == ["uri", "label"] and train["uri"].str.endswith(".png").all()
    assert train["label"].value_counts().to_dict() == {
        "bar": 6,
        "column": 6,
        "diagonal": 6,
    }  # stratified: 2 each for val and test
    again = run_preprocess(PreprocessParams(data_uri=prefix, target="label", image_size=SIZE, image_channels="rgb",
                                            output_uri=storage.join(local_bucket, "prep2")))  # fmt: skip
    assert formats.read_frame(again.splits["test"]).equals(formats.read_frame(prep.splits["test"]))  # deterministic
    assert storage.read_model(again.spec_uri, FeatureSpec).image.channels == 3  # asked for
    with pytest.raises(InputError, match="image model"):  # the search covers the tabular MLP only
        search(TuneParams(train=TrainParams(preprocess_manifest=prep.manifest_uri)))


def test_pipeline_options_for_images() -> None:
    params = PipelineParams(data_uri="s3://b/raw/digits/", target="label", architecture="mlp", hidden_sizes=["128,64"],
                            image_size=16, image_channels="rgb", augment=False)  # fmt: skip
    assert params.preprocess().image_size == 16 and params.preprocess().image_channels == "rgb"
    vision_config = params.train("s3://b/runs/r/preprocess/manifest.json").vision
    assert vision_config.architecture == "mlp" and vision_config.hidden_sizes == [128, 64]
    assert not vision_config.augment.enabled


def test_a_table_of_image_uris_with_an_image_column(local_bucket: str) -> None:
    uris = write_shape_images(storage.join(local_bucket, "images"), per_class=8, size=SIZE)
    table = storage.join(local_bucket, "labels.csv")
    relative = [uri.split("/images/", 1)[1] for uri in uris]  # relative to the table's folder
    labels = [r.split("/")[0] for r in relative]
    formats.write_frame(pd.DataFrame({"path": ["images/" + r for r in relative], "shape": labels}), table)
    prep = run_preprocess(PreprocessParams(data_uri=table, target="shape", image_column="path", image_size=SIZE,
                                           output_uri=storage.join(local_bucket, "prep")))  # fmt: skip
    loaded = storage.read_model(prep.spec_uri, FeatureSpec)
    assert loaded.feature_names == ["path"] and loaded.width == SIZE * SIZE
    frame = formats.read_frame(prep.splits["val"])
    assert loaded.encode(frame, "val").shape == (len(frame), SIZE * SIZE)  # the URIs resolve and decode


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "no image files"),
        ({"loose.png": 1}, "directly under the prefix"),
        ({"cat/": 6}, "one class folder ('cat')"),
        ({"cat/": 6, "dog/": 2}, "class folder 'dog' has 2 image(s); each class needs at least 5"),
    ],
)
def test_layout_errors_are_one_line(local_bucket: str, layout: dict[str, int], message: str) -> None:
    prefix = storage.join(local_bucket, "raw", "pets")
    storage.write_bytes(storage.join(prefix, "notes.txt"), b"not an image")
    png = storage.read_bytes(write_shape_images(storage.join(local_bucket, "one"), per_class=1, size=SIZE)[0])
    for where, count in layout.items():
        for i in range(count):
            storage.write_bytes(storage.join(prefix, where if not where.endswith("/") else f"{where}{i}.png"), png)
    params = PreprocessParams(data_uri=prefix + "/", target="label", task="image-classification", image_size=SIZE)
    with pytest.raises(InputError, match="^" + local_bucket.split(":", 1)[0]) as error:
        run_preprocess(params)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_cnn_and_the_classic_mlp_take_raw_pixels() -> None:
    torch.manual_seed(0)
    digits = spec(classes=10, size=28)
    x = torch.rand(5, 784) * 255
    cnn = vision.build_net(digits, VisionConfig(channels=[8, 16, 32])).eval()
    mlp = vision.build_net(digits, VisionConfig(architecture="mlp", hidden_sizes=[128, 64])).eval()
    assert cnn(x).shape == mlp(x).shape == (5, 10)
    assert [(m.in_features, m.out_features) for m in mlp.linear_layers()] == [(784, 128), (128, 64), (64, 10)]
    assert [b.conv.out_channels for b in cnn.blocks] == [8, 16, 32]
    normalized = cnn.normalize(x)
    assert normalized.shape == (5, 1, 28, 28)
    torch.testing.assert_close(normalized, ((x - 40) / 60).reshape(5, 1, 28, 28))  # the train split's mean and std
    assert vision.multiply_adds(mlp, digits) == 784 * 128 + 128 * 64 + 64 * 10


def test_augmentation_moves_training_images_only() -> None:
    torch.manual_seed(0)
    rgb = spec(channels=3)
    x = torch.rand(8, rgb.width) * 255
    still = AugmentConfig(rotate_degrees=0, translate=0, scale=0)
    torch.testing.assert_close(vision.augment(x, rgb.image, still), x, atol=1e-3, rtol=0)  # identity resampling
    moved = vision.augment(x, rgb.image, AugmentConfig(crop_padding=2, flip=True))
    assert moved.shape == x.shape and not torch.allclose(moved, x)

    module = ImageModule(rgb.model_dump(), VisionConfig(channels=[4]).model_dump(), {})
    seen: list[torch.Tensor] = []
    module.net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    y = torch.zeros(8, dtype=torch.long)
    module.log = lambda *args, **kwargs: None  # no trainer attached
    module.training_step((x, y), 0)
    module.validation_step((x, y), 0)
    module.eval()
    module(x)
    assert not torch.allclose(seen[0], x), "training batches are augmented"
    assert torch.equal(seen[1], x) and torch.equal(seen[2], x), "validation and inference batches are not"
    off = ImageModule(rgb.model_dump(), VisionConfig(channels=[4], augment={"enabled": False}).model_dump(), {})
    off.log = module.log
    off.net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    off.training_step((x, y), 0)
    assert torch.equal(seen[-1], x)


def test_channel_pruning_removes_whole_filters() -> None:
    torch.manual_seed(0)
    config = VisionConfig(channels=[8, 16])
    features = spec()
    net = ConvNet(features, config).eval()
    for block in net.blocks:  # batch norm statistics that are not the identity
        block.norm.running_mean.uniform_(-0.5, 0.5)
        block.norm.running_var.uniform_(0.5, 2)
    x = torch.rand(6, features.width) * 255
    same = pruning.prune_channels(net, features, config, [8, 16]).eval()
    torch.testing.assert_close(same(x), net(x))  # keeping every filter changes nothing
    smaller = pruning.prune_channels(net, features, config, [4, 6]).eval()
    assert smaller(x).shape == (6, 3)
    assert pruning.channel_widths(smaller) == [4, 6] and smaller.classifier.in_features == 6
    assert vision.parameter_count(smaller) < vision.parameter_count(net) / 2
    assert vision.multiply_adds(smaller, features) < vision.multiply_adds(net, features) / 2
    kept = torch.sort(torch.topk(pruning.filter_scores(net)[0], 4).indices).values  # the largest (folded) L1
    torch.testing.assert_close(smaller.blocks[0].conv.weight, net.blocks[0].conv.weight[kept])


def test_images_decoded_in_loader_workers_match_those_held_in_memory(local_bucket: str) -> None:
    uris = write_shape_images(storage.join(local_bucket, "images"), per_class=3, size=SIZE)
    split = storage.join(local_bucket, "split.parquet")
    formats.write_frame(pd.DataFrame({"uri": uris, "label": [i % 3 for i in range(len(uris))]}), split)
    features = spec()
    memory = ImageDataModule(features, {"train": split}, 4, 0)
    lazy = ImageDataModule(features, {"train": split}, 4, 0, ImageLoader(in_memory_below=0, workers=0))
    memory.setup(), lazy.setup()
    assert isinstance(memory.datasets["train"], torch.utils.data.TensorDataset)
    assert isinstance(lazy.datasets["train"], vision.ImageFiles)
    eager = [b for b in memory.train_dataloader()]
    per_item = [b for b in lazy.train_dataloader()]
    for (x1, y1), (x2, y2) in zip(eager, per_item):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert np.isclose(float(eager[0][0].max()), 230, atol=1)  # raw 0-255 pixels


def test_the_image_demo_writes_digits_as_png_class_folders(local_bucket: str) -> None:
    data = demo.write_demo_images(Settings.of(local_bucket))
    listed = storage.list_objects(data.raw_uri)
    assert image_data.is_class_folders(data.raw_uri) and len(listed) + len(data.incoming_files) == 1797
    assert {storage.relative_key(data.raw_uri, o.uri).split("/")[0] for o in listed} == {str(d) for d in range(10)}
    with Image.open(io.BytesIO(storage.read_bytes(listed[0].uri))) as image:
        assert image.format == "PNG" and image.mode == "L" and image.size == (28, 28)
        assert np.asarray(image).max() > 200  # 0-16 scaled to 0-255
    labels = formats.read_frame(data.labels_uri)
    assert labels["uri"].tolist() == data.incoming_files and len(labels) == 179
    assert all(uri.startswith(data.incoming_uri) for uri in data.incoming_files)
