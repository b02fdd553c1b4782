"""Explanations: the attributions find the features the label depends on, add up to the prediction minus the
baseline on every scored row, match captum (PyTorch's attribution library) on the fp32 network, and give a
category one attribution; the card ranks the columns by permutation importance."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import DeepLift, IntegratedGradients
from scipy.stats import spearmanr

from maas.modules import explain, formats, registry, storage
from maas.modules.compress import export_attributions
from maas.modules.errors import InputError
from maas.modules.explain import COMPLETENESS_TOLERANCE, Explainer, completeness_error
from maas.modules.manifests import PreprocessResult
from maas.modules.model import AttributionHead, MLPConfig, TabularNet
from maas.modules.preprocess import fit_spec
from maas.modules.registry import ModelCard, RegisterParams, register
from maas.modules.score import ScoreParams, plan, score_file
from tests.conftest import synthetic_regression
from tests.unit.conftest import train_and_compress

SIGNAL = ["signal_a", "signal_b"]
NOISE = [f"noise_{i}" for i in range(6)]


def two_signals(rows: int, seed: int) -> pd.DataFrame:
    """The label depends on signal_a and signal_b only; six numeric columns and a category are noise.

    The signals keep away from their mean (0): a column at its training mean has moved nothing away from
    the baseline, so no baseline method could name it, whatever the label depends on."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, 8)), columns=SIGNAL + NOISE)
    frame[SIGNAL] = rng.choice([-1, 1], size=(rows, 2)) * rng.uniform(0.5, 2.5, size=(rows, 2))
    frame["region"] = rng.choice(["north", "south", "east", "west"], rows)
    frame["label"] = np.where(frame["signal_a"] + frame["signal_b"] > 0, "yes", "no")
    frame.insert(0, "id", [f"r{i}" for i in range(rows)])
    return frame


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ModelCard, str]:
    """Bucket, card and card URI of a model trained on `two_signals`."""
    bucket = (tmp_path_factory.mktemp("explain") / "bucket").as_uri()
    train = {"max_epochs": 6, "optim": {"lr": 0.02}, "model": {"hidden_sizes": [32, 16]}}
    manifest = train_and_compress(bucket, "signals", two_signals(1000, 0), train=train, finetune_epochs=1,
                                  prune_steps=1, sparsity=0.5, quantization="pruned-int8-dynamic")  # fmt: skip
    result = register(RegisterParams(compress_manifest=manifest, bucket=bucket, name="signals"))
    return bucket, registry.load_card(result.card_uri), result.card_uri


def _score(bucket: str, tmp_path, frame: pd.DataFrame, **options: object) -> pd.DataFrame:
    incoming = (tmp_path / "incoming").as_uri()
    formats.write_frame(frame, storage.join(incoming, "rows.parquet"))
    params = ScoreParams(model="signals/1", bucket=bucket, input_uri=incoming, output_uri=(tmp_path / "out").as_uri(),
                         state_uri=(tmp_path / "state").as_uri(), drift=False, shadow=None, **options)  # fmt: skip
    job = plan(params)
    outcome = score_file(job.without_files(), job.files[0])
    assert outcome.status == "scored", outcome.error
    manifest = storage.read_json(storage.join(job.output_uri, "rows.parquet.manifest.json"))
    assert manifest["explain_sha256"] == registry.load_card(job.card_uri).artifacts["explain"].sha256
    return formats.read_frame(outcome.output_uri)


def _fp32_net(card: ModelCard, card_uri: str) -> TabularNet:
    """The network the explanations describe: the served int8 model's fp32 weights (the `torch` artifact)."""
    net = TabularNet(card.features, MLPConfig.model_validate(card.model))
    weights = registry.read_artifact(card_uri, card, "torch")
    net.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
    return net.eval()


def test_the_two_features_the_label_depends_on_come_first(model, tmp_path) -> None:
    bucket, card, _ = model
    scored = _score(bucket, tmp_path, two_signals(1000, 1), explain_top=2)
    assert list(scored.columns[-4:]) == ["top1_feature", "top1_attr", "top2_feature", "top2_attr"]
    top2 = scored[["top1_feature", "top2_feature"]].apply(frozenset, axis=1)
    assert (top2 == frozenset(SIGNAL)).mean() >= 0.95
    assert (scored["top1_attr"].abs() >= scored["top2_attr"].abs()).all()

    report = card.explanations
    assert {f.feature for f in report.importance[:2]} == set(SIGNAL)  # permutation importance
    by_attribution = sorted(report.importance, key=lambda f: -f.mean_abs_attribution)
    assert {f.feature for f in by_attribution[:2]} == set(SIGNAL)
    assert len(report.importance) == 9 and report.rows == 150 and report.repeats == 5
    assert report.explains == "the fp32 network behind pruned-int8-dynamic (hidden layers [16, 8])"
    assert report.output == "the predicted class's logit"
    assert storage.exists(registry.card_uri(bucket, "signals", 1).replace("card.json", report.plot))


def test_attributions_add_up_to_prediction_minus_baseline_on_every_row(model, tmp_path) -> None:
    bucket, card, card_uri = model
    rows = two_signals(500, 2)
    rows.loc[::7, "noise_0"] = np.nan  # imputed by the model: explained like any other value
    scored = _score(bucket, tmp_path, rows, explain=True)
    names = card.features.feature_names
    assert [c for c in scored.columns if c.startswith("attr_")] == [f"attr_{n}" for n in names]
    assert "attr_region" in scored.columns  # a category: one attribution, not one per level

    net = _fp32_net(card, card_uri)
    with torch.no_grad():
        logits = net(torch.from_numpy(card.features.encode(rows, "rows"))).numpy()
    classes = scored["prediction"].map({c: i for i, c in enumerate(card.classes)}).to_numpy()
    attributions = scored[[f"attr_{n}" for n in names]].to_numpy()
    baseline = np.array(card.explanations.baseline_output)
    errors = completeness_error(attributions, logits, baseline, classes)
    assert errors.max() <= COMPLETENESS_TOLERANCE
    assert card.explanations.completeness_max_error <= COMPLETENESS_TOLERANCE


@pytest.mark.filterwarnings("ignore::UserWarning:captum")
def test_attributions_match_captum_on_the_fp32_network(model) -> None:
    """DeepLIFT (Rescale) is what runs: captum's DeepLift gives the same numbers. Integrated gradients (captum,
    128 steps) is the other exact-in-the-limit method: it ranks the columns the same way on almost every row."""
    bucket, card, card_uri = model
    spec = card.features
    rows = spec.encode(two_signals(300, 3), "rows")
    explainer = registry.load_explainer(card_uri, card)
    net = _fp32_net(card, card_uri)
    x = torch.from_numpy(np.require(rows, requirements="W"))
    with torch.no_grad():
        logits = net(x)
        inputs = net.transform(x)
    target = logits.argmax(dim=1)
    ours = explainer.attributions(rows, logits.numpy())
    baseline = _reference(net, spec, card)
    groups = AttributionHead(net, spec, baseline).groups

    deeplift = DeepLift(net.mlp).attribute(inputs, baselines=baseline[None], target=target) @ groups
    np.testing.assert_allclose(ours, deeplift.detach().numpy(), atol=1e-5, rtol=1e-4)

    integrated = IntegratedGradients(net.mlp).attribute(inputs, baselines=baseline[None], target=target, n_steps=128)
    integrated = (integrated @ groups).detach().numpy()
    ranks = np.array([spearmanr(a, b).statistic for a, b in zip(ours, integrated)])
    assert np.median(ranks) >= 0.9 and (ranks >= 0.5).mean() >= 0.95
    same_top2 = [set(np.argsort(-np.abs(a))[:2]) == set(np.argsort(-np.abs(b))[:2]) for a, b in zip(ours, integrated)]
    assert np.mean(same_top2) >= 0.95
    scale = np.abs(integrated).sum(axis=1)  # per row, the difference is small next to the attributions' total
    assert np.median(np.abs(ours - integrated).sum(axis=1) / scale) <= 0.1


def _reference(net: TabularNet, spec, card: ModelCard) -> torch.Tensor:
    """The baseline point in the network's input space, recovered from the card's baseline output: the
    training means, as compression computed them (checked by reproducing f(baseline))."""
    splits = storage.read_model(card.lineage.preprocess_manifest, PreprocessResult).splits
    train = torch.from_numpy(spec.encode(formats.read_frame(splits["train"]), "train"))
    reference = AttributionHead.reference_of(net, train)
    with torch.no_grad():
        np.testing.assert_allclose(net.mlp(reference[None])[0].numpy(), card.explanations.baseline_output, atol=1e-4)
    return reference


@pytest.mark.parametrize("columns", [["f0", "f1", "f2", "f3", "shop"], ["f0", "f1", "f2", "f3"]])
def test_regression_attributions_are_in_the_targets_units(tmp_path, columns: list[str]) -> None:
    """An untrained regression network, with and without a category: the ONNX graph equals the torch module, one
    attribution per raw column, and they add up to the predicted value minus its baseline in the target's units."""
    frame = synthetic_regression(300).assign(shop=lambda f: np.where(f["f0"] > 0, "big", "small"))
    spec = fit_spec(frame, "price", "regression", columns, 10)
    torch.manual_seed(0)
    net = TabularNet(spec, MLPConfig(hidden_sizes=[16, 8])).eval()
    rows = spec.encode(frame, "t")
    x = torch.from_numpy(np.require(rows, requirements="W"))
    head = AttributionHead(net, spec, AttributionHead.reference_of(net, x))
    export_attributions(head, spec.width, tmp_path / "explain.onnx")
    explainer = Explainer(spec, (tmp_path / "explain.onnx").read_bytes())
    with torch.no_grad():
        values = (net(x) * spec.target_scale + spec.target_mean).numpy()
        baseline = (net.mlp(head.reference[None])[0] * spec.target_scale + spec.target_mean).numpy()
    ours = explainer.attributions(rows, values)
    assert ours.shape == (300, len(columns))
    np.testing.assert_allclose(ours, head(x, torch.zeros(300, dtype=torch.long)).detach().numpy(), atol=1e-5)
    errors = completeness_error(ours, values, baseline, np.zeros(300, dtype=np.int64))
    assert errors.max() <= COMPLETENESS_TOLERANCE


def test_top_columns_are_the_largest_in_absolute_value() -> None:
    attributions = np.array([[0.1, -3.0, 2.0, 0.0], [1.0, 0.5, -0.2, 4.0]], dtype=np.float32)
    names = ["f0", "f1", "f2", "f3"]
    top = explain.frame(attributions, names, pd.RangeIndex(2), top=3)
    assert top.iloc[0].tolist() == ["f1", -3.0, "f2", 2.0, "f0", pytest.approx(0.1)]
    assert top.iloc[1].tolist() == ["f3", 4.0, "f0", 1.0, "f1", 0.5]
    every = explain.frame(attributions, names, pd.RangeIndex(2), top=4)  # K = all columns: a full sort
    assert every["top4_feature"].tolist() == ["f3", "f2"] and every["top1_feature"].tolist() == ["f1", "f3"]
    assert list(explain.frame(attributions, names, pd.RangeIndex(2)).columns) == [f"attr_{n}" for n in names]


def test_asking_for_more_top_columns_than_inputs_is_refused_before_scoring(model, tmp_path) -> None:
    bucket, _, _ = model
    formats.write_frame(two_signals(10, 4), (tmp_path / "in" / "a.csv").as_uri())
    with pytest.raises(InputError, match="explain_top 10 exceeds the 9 input columns of signals/1"):
        plan(ScoreParams(model="signals/1", bucket=bucket, input_uri=(tmp_path / "in").as_uri(), explain_top=10))


def test_explaining_while_scoring_never_loads_torch(model, tmp_path) -> None:
    """The attribution graph runs on ONNX Runtime: a scoring process that explains every row imports no torch."""
    bucket, _, _ = model
    formats.write_frame(two_signals(20, 5), (tmp_path / "in" / "a.csv").as_uri())
    code = (
        "import sys\nfrom maas.modules.score import ScoreParams, plan, score_file\n"
        f"job = plan(ScoreParams(model='signals/1', bucket={bucket!r}, input_uri={(tmp_path / 'in').as_uri()!r}, "
        f"output_uri={(tmp_path / 'out').as_uri()!r}, state_uri={(tmp_path / 'state').as_uri()!r}, explain=True))\n"
        "print(score_file(job, job.files[0]).status, 'torch' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.stdout.split() == ["scored", "False"], out.stderr[-2000:]
