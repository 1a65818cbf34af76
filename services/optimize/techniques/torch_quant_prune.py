"""Torch quantisation and pruning of the lifted module; candidates saved as TorchScript.

- quantize-dynamic: int8 weights, activations quantised on the fly, for ``nn.Linear``
  (and LSTM) layers, with ``torch.ao.quantization.quantize_dynamic``. torch 2.13 marks
  ``torch.ao.quantization`` deprecated in favour of torchao; torchao 0.18 does work with
  torch 2.13 here, but what it produces is a module of ``torchao`` tensor subclasses whose
  torch.export archive the worker's weights-only loader refuses (``Int8Tensor`` is not an
  allowed global) and which needs torchao on every worker. The torch.ao module traces to a
  plain TorchScript file (``quantized::linear_dynamic`` ops) that any worker loads.
- prune:AMOUNT: L1 unstructured pruning of every linear weight, then ``prune.remove`` so
  the zeros are baked in. The tensors stay dense, so dense kernels do the same work: the
  report gives the sparsity and says so.
- prune-structured:AMOUNT: removes the AMOUNT of hidden neurons with the smallest L2 row
  norm between two linear layers joined only by element-wise ops, slicing both layers, so
  the model really has fewer parameters. Optional fine-tuning (``finetune=EPOCHS``) on the
  transfer set's labels.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils import prune

from services.optimize import lift
from services.optimize.errors import TechniqueNotApplicable
from services.optimize.techniques.base import Built, Context, parameter_count, save_torchscript, torch_config

#: Element-wise ops a neuron passes through unchanged in position between two linear layers.
_POINTWISE = {
    torch.ops.aten.relu.default, torch.ops.aten.gelu.default, torch.ops.aten.tanh.default,
    torch.ops.aten.sigmoid.default, torch.ops.aten.silu.default, torch.ops.aten.dropout.default,
    torch.ops.aten.leaky_relu.default, torch.ops.aten.hardtanh.default, torch.ops.aten.elu.default,
}


def quantize_dynamic(ctx: Context, out_dir: Path) -> Built:
    module = ctx.eager()
    layers = lift.require_linear(module, "quantize-dynamic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices, once per layer
        quantized = torch.ao.quantization.quantize_dynamic(module, {nn.Linear, nn.LSTM}, dtype=torch.qint8)
    save_torchscript(quantized, ctx.sample(), out_dir)
    return Built(
        torch_config(ctx),
        {"int8_layers": _count_quantized(out_dir / "model.pt"), "linear_layers": len(layers)},
        ["torch.ao.quantization.quantize_dynamic (qint8 weights, dynamic activations), traced to TorchScript"],
    )


def _count_quantized(path: Path) -> int:
    """Dynamic int8 linear layers in a saved TorchScript file (read back, not assumed)."""
    loaded = torch.jit.load(str(path))
    return sum(1 for _, m in loaded.named_modules() if m.original_name == "LinearPackedParams")


def prune_unstructured(ctx: Context, out_dir: Path, amount: float) -> Built:
    module = ctx.eager()
    layers = lift.require_linear(module, "prune")
    for _, layer in layers:
        prune.l1_unstructured(layer, "weight", amount=amount)
        prune.remove(layer, "weight")
    save_torchscript(module, ctx.sample(), out_dir)
    zeros, total = weight_zeros(torch.jit.load(str(out_dir / "model.pt")))
    return Built(
        torch_config(ctx),
        {"sparsity": zeros / total, "weights": total},
        [f"L1 unstructured, {amount:.0%} of each linear weight zeroed; tensors stay dense, "
         "so dense kernels run no faster and the file is no smaller"],
    )


def weight_zeros(module: nn.Module) -> tuple[int, int]:
    """Zeros and elements over the linear weights of ``module`` (eager or TorchScript)."""
    zeros = total = 0
    for name, param in module.named_parameters():
        if name.endswith("weight") and param.dim() == 2:
            zeros += int((param == 0).sum())
            total += param.numel()
    return zeros, total


def prune_structured(ctx: Context, out_dir: Path, amount: float, finetune_epochs: int = 0) -> Built:
    module = ctx.eager()
    before = parameter_count(module)
    pairs = linear_pairs(module)
    if not pairs:
        raise TechniqueNotApplicable(
            "prune-structured: no two linear layers joined only by element-wise ops, so no neuron can be removed"
        )
    removed = {}
    for producer, consumer in pairs:
        removed[producer] = shrink_pair(module, producer, consumer, amount)
    notes = [f"removed {sum(removed.values())} hidden neurons ({amount:.0%} of each of {len(pairs)} layer(s))"]
    if finetune_epochs:
        from services.optimize.techniques.distill import train_on_labels

        notes.append(train_on_labels(ctx, module, finetune_epochs))
    save_torchscript(module, ctx.sample(), out_dir)
    after = parameter_count(torch.jit.load(str(out_dir / "model.pt")))
    return Built(torch_config(ctx), {"parameters_before": before, "parameters": after, "neurons_removed": removed},
                 notes)


def linear_pairs(module: fx.GraphModule) -> list[tuple[str, str]]:
    """(producer, consumer) linear layers where only element-wise ops sit between them."""
    layers = dict(lift.linear_layers(module))
    pairs = []
    for node in module.graph.nodes:
        if node.op != "call_module" or node.target not in layers:
            continue
        current = node
        while len(current.users) == 1:
            (user,) = current.users
            if user.op == "call_module" and user.target in layers and user.args[0] is current:
                pairs.append((str(node.target), str(user.target)))
                break
            if user.op == "call_function" and user.target in _POINTWISE and user.args[0] is current:
                current = user
                continue
            break
    return pairs


def drop_square_layers(module: fx.GraphModule, count: int) -> int:
    """Remove up to ``count`` hidden layers whose input and output widths match (depth shrink).

    A removable layer B sits in a chain A -> pointwise -> B -> pointwise -> C of linear
    layers; B and the element-wise ops after it go, so C reads what B read. The last such
    layers go first (DistilBERT-style, keeping the early layers' features). Returns how
    many were removed.
    """
    removed = 0
    while removed < count:
        pairs = linear_pairs(module)
        consumers = {producer: consumer for producer, consumer in pairs}
        candidates = [b for a, b in pairs if b in consumers and _square(module, b)]
        if not candidates:
            break
        target = candidates[-1]
        node = next(n for n in module.graph.nodes if n.op == "call_module" and n.target == target)
        source = node.args[0]
        current = node
        while True:
            (user,) = current.users
            if user.op == "call_module":
                break
            current = user
        current.replace_all_uses_with(source)
        module.graph.eliminate_dead_code()
        module.delete_all_unused_submodules()
        module.recompile()
        removed += 1
    return removed


def _square(module: nn.Module, name: str) -> bool:
    layer = module.get_submodule(name)
    return isinstance(layer, nn.Linear) and layer.in_features == layer.out_features


def shrink_pair(module: fx.GraphModule, producer: str, consumer: str, amount: float) -> int:
    """Drop the weakest ``amount`` of ``producer``'s outputs and ``consumer``'s matching inputs."""
    first = module.get_submodule(producer)
    second = module.get_submodule(consumer)
    assert isinstance(first, nn.Linear) and isinstance(second, nn.Linear)
    drop = round(amount * first.out_features)
    if drop <= 0 or drop >= first.out_features:
        return 0
    # ln_structured computes the mask by L2 norm per output row; the kept rows are sliced out.
    prune.ln_structured(first, "weight", amount=drop, n=2, dim=0)
    mask = first.weight_mask
    assert isinstance(mask, torch.Tensor)
    keep = mask.sum(dim=1).nonzero().flatten()
    prune.remove(first, "weight")
    smaller_first = nn.Linear(first.in_features, len(keep), bias=first.bias is not None)
    smaller_second = nn.Linear(len(keep), second.out_features, bias=second.bias is not None)
    with torch.no_grad():
        smaller_first.weight.copy_(first.weight[keep])
        if first.bias is not None:
            smaller_first.bias.copy_(first.bias[keep])
        smaller_second.weight.copy_(second.weight[:, keep])
        if second.bias is not None:
            smaller_second.bias.copy_(second.bias)
    _replace(module, producer, smaller_first)
    _replace(module, consumer, smaller_second)
    return drop


def _replace(module: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent: Any = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, child, new)
