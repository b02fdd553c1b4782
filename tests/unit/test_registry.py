"""Versions, aliases, cards and checksum-verified loading, on the bucket itself."""

from __future__ import annotations

import concurrent.futures

import pytest

from maas.modules import registry, storage
from maas.modules.errors import RegistryError
from maas.modules.registry import RegisterParams, register
from tests.unit.conftest import train_and_compress


def test_first_registration_is_version_1_latest_and_production(registered) -> None:
    bucket, result = registered
    assert (result.version, result.model_ref) == (1, "toy@production")
    assert registry.aliases(bucket, "toy") == {"latest": 1, "production": 1}
    card = registry.load_card(result.card_uri)
    assert card.features.feature_names == ["x1", "x2", "color"] and card.classes == ["a", "b", "c"]
    names = {v.name for v in card.metrics}
    onnx = {"fp32-onnx", "int8", "pruned-fp32-onnx", "pruned-int8-dynamic", "pruned-int8-static"}
    assert names == {"fp32", "pruned", "pruned-torch-int8", *onnx}
    assert card.served in onnx and card.served_reason.startswith(card.served)
    assert card.gate.passed and card.lineage.data_uri.endswith("raw/data.csv")
    assert card.lineage.data_etag == storage.info(card.lineage.data_uri).etag
    assert {"torch", "onnxruntime", "pytorch-lightning"} <= set(card.packages)
    served = card.artifacts["int8"]
    data = storage.read_bytes(registry.model_uri(bucket, "toy", "1", served.file))
    assert storage.sha256_hex(data) == served.sha256 and len(data) == served.size_bytes
    report = storage.read_bytes(registry.model_uri(bucket, "toy", "1", card.report))
    assert report.startswith(b"\x89PNG")  # the trade-off plot travels with the version


def test_the_card_measures_classical_baselines_on_the_same_test_split(registered) -> None:
    card = registry.load_card(registered[1].card_uri)
    baselines = {b.name: b for b in card.baselines}
    assert set(baselines) == {"logistic", "gradient-boosting"}
    assert baselines["logistic"].model == "LogisticRegression"
    assert all(0.9 <= b.metric <= 1 and b.val_metric is not None for b in baselines.values())  # separable classes
    assert card.baseline_warning is None  # the network holds its own here


@pytest.mark.parametrize(("ref", "version"), [("toy", 1), ("toy@production", 1), ("toy@latest", 1), ("toy/1", 1)])
def test_references_resolve(registered, ref: str, version: int) -> None:
    bucket, _ = registered
    assert registry.resolve(bucket, ref) == ("toy", version)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("toy@staging", "no alias 'staging'.*aliases: latest, production"),
        ("toy/9", "no version 9.*versions: 1"),
        ("..@x", "invalid model name"),
        ("toy@.hidden", "invalid model name"),
        ("a@b@c", "invalid model reference"),
    ],
)
def test_bad_references_explain_themselves(registered, ref: str, message: str) -> None:
    bucket, _ = registered
    with pytest.raises(RegistryError, match=message):
        registry.resolve(bucket, ref)


def test_tampered_artifact_is_refused(registered, tmp_path) -> None:
    bucket, result = registered
    copy = (tmp_path / "bucket").as_uri()
    for obj in storage.list_objects(registry.model_uri(bucket, "toy", "1")):
        storage.write_bytes(storage.join(copy, "models/toy/1", obj.uri.rsplit("/", 1)[-1]), storage.read_bytes(obj.uri))
    card_location = registry.card_uri(copy, "toy", 1)
    registry.load_engine(card_location)  # intact copy loads
    artifact = storage.join(copy, "models/toy/1", registry.load_card(card_location).artifacts["int8"].file)
    data = bytearray(storage.read_bytes(artifact))
    data[-10] ^= 0xFF
    storage.write_bytes(artifact, bytes(data))
    with pytest.raises(RegistryError, match="sha256 .* does not match"):
        registry.load_engine(card_location)


@pytest.mark.long
def test_gate_refusal_keeps_production_and_moves_latest(tmp_path) -> None:
    bucket = (tmp_path / "bucket").as_uri()
    good = register(RegisterParams(compress_manifest=train_and_compress(bucket, "good"), bucket=bucket, name="m"))
    # 99% of the units removed, no fine-tune, and that variant served: the gate must say no
    ruined = train_and_compress(bucket, "ruined", sparsity=0.99, finetune_epochs=0, quantization="pruned-int8-dynamic")
    refused = register(RegisterParams(compress_manifest=ruined, bucket=bucket, name="m"))
    assert good.aliases == ["latest", "production"] and refused.aliases == ["latest"]
    assert refused.model_ref == "m/2"
    assert registry.aliases(bucket, "m") == {"latest": 2, "production": 1}
    card = registry.load_card(refused.card_uri)
    assert not card.gate.passed and card.gate.reason.startswith("refused: accuracy")


@pytest.mark.parametrize("store", ["local", "s3"])
def test_concurrent_registrations_get_distinct_versions_and_latest_is_the_highest(registered, store, request) -> None:
    bucket, result = registered
    target = bucket if store == "local" else request.getfixturevalue("s3_bucket")
    manifest = registry.load_card(result.card_uri).lineage.compress_manifest
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(
            pool.map(
                lambda _: register(RegisterParams(compress_manifest=manifest, bucket=target, name="race")), range(6)
            )
        )
    assert sorted(r.version for r in results) == [1, 2, 3, 4, 5, 6]
    assert registry.aliases(target, "race") == {"latest": 6, "production": 6}
    log = [
        storage.read_json(o.uri)
        for o in storage.list_objects(registry.model_uri(target, "race", "aliases", "production"))
    ]
    assert [m["version"] for m in log] == sorted(m["version"] for m in log)  # production never moved back


def test_alias_can_be_moved_back_to_an_older_version(registered) -> None:
    bucket, result = registered
    manifest = registry.load_card(result.card_uri).lineage.compress_manifest
    for _ in range(2):
        register(RegisterParams(compress_manifest=manifest, bucket=bucket, name="back"))
    registry.set_alias(bucket, "back", "production", 1)
    assert registry.resolve(bucket, "back@production") == ("back", 1)
    with pytest.raises(RegistryError, match="no card"):
        registry.set_alias(bucket, "back", "production", 99)
    assert registry.resolve(bucket, "back@production") == ("back", 1)
