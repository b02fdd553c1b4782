"""How closely maas's attributions agree with captum's on a registered model's test split.

Run: .venv/bin/maas demo
     .venv/bin/python benchmarks/explain_agreement.py --card .maas/bucket/models/default/1/card.json
Compares the attribution graph (ONNX Runtime) with captum's DeepLift (the same rule: the numbers should match)
and IntegratedGradients (another method: the ranking should match) on the fp32 network, against the same
baseline, and writes benchmarks/results/explain_agreement.md.
"""

from __future__ import annotations

import argparse
import io
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from captum.attr import DeepLift, IntegratedGradients  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from maas.modules import formats, registry, storage  # noqa: E402
from maas.modules.manifests import PreprocessResult  # noqa: E402
from maas.modules.model import AttributionHead, MLPConfig, TabularNet  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--card", required=True, help="card.json of a registered version (path or URI)")
    parser.add_argument("--steps", type=int, default=128, help="integrated gradients' steps")
    args = parser.parse_args()
    card_uri = args.card if "://" in args.card else Path(args.card).resolve().as_uri()
    card = registry.load_card(card_uri)
    spec = card.features
    net = TabularNet(spec, MLPConfig.model_validate(card.model))
    net.load_state_dict(torch.load(io.BytesIO(registry.read_artifact(card_uri, card, "torch")), weights_only=True))
    net.eval()
    splits = storage.read_model(card.lineage.preprocess_manifest, PreprocessResult).splits
    test = np.require(spec.encode(formats.read_frame(splits["test"]), splits["test"]), requirements="W")
    train = torch.from_numpy(spec.encode(formats.read_frame(splits["train"]), splits["train"]))
    reference = AttributionHead.reference_of(net, train)
    groups = AttributionHead(net, spec, reference).groups
    with torch.no_grad():
        logits, inputs = net(torch.from_numpy(test)), net.transform(torch.from_numpy(test))
    target = logits.argmax(dim=1)
    ours = registry.load_explainer(card_uri, card).attributions(test, logits.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum's notes about hooks and requires_grad
        deeplift = DeepLift(net.mlp).attribute(inputs, baselines=reference[None], target=target)
        integrated = IntegratedGradients(net.mlp).attribute(
            inputs, baselines=reference[None], target=target, n_steps=args.steps
        )
    deeplift, integrated = ((a @ groups).detach().numpy() for a in (deeplift, integrated))
    ranks = np.array([spearmanr(a, b).statistic for a, b in zip(ours, integrated)])
    top1 = np.mean([np.argmax(np.abs(a)) == np.argmax(np.abs(b)) for a, b in zip(ours, integrated)])
    relative = np.abs(ours - integrated).sum(axis=1) / np.abs(integrated).sum(axis=1)
    lines = [
        "# Attributions against captum",
        "",
        f"{card.ref}, trained on {card.lineage.data_uri.rsplit('/', 1)[-1]}: {len(test)} test rows x {spec.width} "
        f"columns; the attribution graph on ONNX Runtime against captum {_version()} on the fp32 network "
        f"{card.model['hidden_sizes']}, same baseline (training means), explaining the predicted class's logit.",
        "",
        f"- captum DeepLift (the same rule): largest absolute difference {np.abs(ours - deeplift).max():.2e} "
        f"(largest attribution {np.abs(ours).max():.3f}).",
        f"- captum IntegratedGradients ({args.steps} steps): per-row Spearman correlation median "
        f"{np.median(ranks):.3f}, 5th percentile {np.percentile(ranks, 5):.3f}, lowest {ranks.min():.3f}; the same "
        f"top column on {top1:.1%} of rows; relative L1 difference median {np.median(relative):.3f}, 95th "
        f"percentile {np.percentile(relative, 95):.3f}.",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "explain_agreement.md").write_text("\n".join(lines))
    print("\n".join(lines))


def _version() -> str:
    from importlib.metadata import version

    return version("captum")


if __name__ == "__main__":
    main()
