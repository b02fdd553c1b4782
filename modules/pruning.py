"""Pruning that pays: whole hidden units removed, smaller Linear layers rebuilt.

Unstructured magnitude pruning zeroes weights but leaves dense matrices of the same shape: the
model is no smaller and no faster until something exploits the zeros, which ONNX Runtime's dense
CPU kernels do not. Structured pruning removes hidden units: a unit's row goes from its layer and
its column from the next layer, so every matrix shrinks and the multiply-adds fall with it.

Units are ranked per hidden layer by an importance score:
- `l1` / `l2`: norm of the unit's incoming weights (cheap, data-free);
- `activation`: mean absolute activation on a sample of training rows (data-aware: a unit that
  rarely fires matters little whatever its weights).

An image CNN (`maas.modules.vision.ConvNet`) is pruned the same way by whole filters: a conv block's
output channels ranked by the L1 norm of their filters (batch norm's scale folded in); a channel goes
from its conv (and batch norm) and from the input channels of the next conv, or the columns of the
classifier after the last block.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils import prune

from maas.modules.model import MLPConfig, TabularNet
from maas.modules.preprocess import FeatureSpec
from maas.modules.vision import ConvNet, VisionConfig

Importance = Literal["l1", "l2", "activation"]


def widths(net: TabularNet) -> list[int]:
    """Hidden layer widths."""
    return [layer.out_features for layer in net.linear_layers()[:-1]]


def parameter_count(net: TabularNet, nonzero: bool = False) -> int:
    """Weights and biases of the MLP's Linear layers (the preprocessing has no trainable parameters)."""
    tensors = [t for layer in net.linear_layers() for t in (layer.weight, layer.bias)]
    return sum(int((t != 0).sum()) if nonzero else t.numel() for t in tensors)


def multiply_adds(net: TabularNet) -> int:
    """Multiply-adds per row in the MLP's Linear layers as dense kernels run them (zero weights count):
    a cost that, unlike measured speed, does not depend on the machine."""
    return sum(layer.in_features * layer.out_features for layer in net.linear_layers())


def unit_scores(net: TabularNet, importance: Importance, sample: torch.Tensor | None = None) -> list[torch.Tensor]:
    """One score per unit of each hidden layer; higher is more important."""
    hidden = net.linear_layers()[:-1]
    if importance in ("l1", "l2"):
        p = 1 if importance == "l1" else 2
        return [layer.weight.detach().norm(p=p, dim=1) for layer in hidden]
    if sample is None:
        raise ValueError("activation importance needs a sample of feature rows")
    activations: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: activations.append(out.relu().abs().mean(0)))
             for layer in hidden]  # fmt: skip
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(sample)
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    return activations


def keep_top_units(scores: list[torch.Tensor], keep_widths: list[int]) -> list[torch.Tensor]:
    """Indices (ascending, so units keep their order) of the highest-scoring units per layer."""
    return [torch.sort(torch.topk(s, k).indices).values for s, k in zip(scores, keep_widths)]


def remove_units(net: TabularNet, spec: FeatureSpec, keep: list[torch.Tensor], dropout: float) -> TabularNet:
    """A new, smaller network with only the kept units: rows of their layer, columns of the next."""
    smaller = TabularNet(spec, MLPConfig(hidden_sizes=[len(k) for k in keep], dropout=dropout))
    smaller.transform.load_state_dict(net.transform.state_dict())
    old_layers, new_layers = net.linear_layers(), smaller.linear_layers()
    with torch.no_grad():
        for i, (old, new) in enumerate(zip(old_layers, new_layers)):
            rows = keep[i] if i < len(keep) else torch.arange(old.out_features)
            columns = keep[i - 1] if i > 0 else torch.arange(old.in_features)
            new.weight.copy_(old.weight[rows][:, columns])
            new.bias.copy_(old.bias[rows])
    return smaller


def structured_step(
    net: TabularNet,
    spec: FeatureSpec,
    target_widths: list[int],
    importance: Importance,
    dropout: float,
    sample: torch.Tensor | None = None,
) -> TabularNet:
    """Shrink each hidden layer to its target width, keeping its most important units."""
    keep = keep_top_units(unit_scores(net, importance, sample), target_widths)
    return remove_units(net, spec, keep, dropout)


def schedule_widths(original: list[int], fraction: float, steps: int) -> list[list[int]]:
    """Widths after each of `steps` equal pruning steps towards removing `fraction` of every layer's units."""
    return [[max(1, round(w * (1 - fraction * step / steps))) for w in original] for step in range(1, steps + 1)]


def mask_unstructured(net: TabularNet, amount: float) -> None:
    """Global L1 magnitude masks on every Linear weight (fine-tune through them, then `make_permanent`)."""
    layers = net.linear_layers()
    prune.global_unstructured([(layer, "weight") for layer in layers], prune.L1Unstructured, amount=amount)


def make_permanent(net: nn.Module) -> None:
    for layer in net.modules():
        if isinstance(layer, nn.Linear) and prune.is_pruned(layer):
            prune.remove(layer, "weight")


def channel_widths(net: ConvNet) -> list[int]:
    """Output channels of each conv block."""
    return [block.conv.out_channels for block in net.blocks]


def filter_scores(net: ConvNet) -> list[torch.Tensor]:
    """Per conv block, the L1 norm of each output channel's filter as the block applies it, with its batch norm's
    scale folded in (gamma / sqrt(running var + eps)); higher is more important. Batch norm undoes any scale of
    the conv's own weights, so their norm alone would not say how much a channel passes on."""
    scores = []
    for block in net.blocks:
        l1 = block.conv.weight.detach().abs().sum(dim=(1, 2, 3))
        if isinstance(block.norm, nn.BatchNorm2d):
            l1 = l1 * (block.norm.weight.detach() / torch.sqrt(block.norm.running_var + block.norm.eps)).abs()
        scores.append(l1)
    return scores


def remove_channels(net: ConvNet, spec: FeatureSpec, config: VisionConfig, keep: list[torch.Tensor]) -> ConvNet:
    """A new, smaller CNN with only the kept channels of each block: its conv's filters and batch norm's
    entries, the next conv's input channels (or the classifier's columns)."""
    smaller = ConvNet(spec, config.model_copy(update={"channels": [len(k) for k in keep]}))
    smaller.normalize.load_state_dict(net.normalize.state_dict())
    with torch.no_grad():
        for i, (old, new) in enumerate(zip(net.blocks, smaller.blocks)):
            rows = keep[i]
            columns = keep[i - 1] if i > 0 else torch.arange(old.conv.in_channels)
            new.conv.weight.copy_(old.conv.weight[rows][:, columns])
            if old.conv.bias is not None:
                new.conv.bias.copy_(old.conv.bias[rows])
            if isinstance(old.norm, nn.BatchNorm2d):
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(new.norm, name).copy_(getattr(old.norm, name)[rows])
                new.norm.num_batches_tracked.copy_(old.norm.num_batches_tracked)
        smaller.classifier.weight.copy_(net.classifier.weight[:, keep[-1]])
        smaller.classifier.bias.copy_(net.classifier.bias)
    return smaller


def prune_channels(net: ConvNet, spec: FeatureSpec, config: VisionConfig, target_widths: list[int]) -> ConvNet:
    """Shrink each conv block to its target width, keeping the filters with the largest L1 norm."""
    return remove_channels(net, spec, config, keep_top_units(filter_scores(net), target_widths))
