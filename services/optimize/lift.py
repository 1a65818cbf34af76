"""Turn a served torch artifact into an editable torch module.

The worker serves TorchScript and torch.export programs, neither of which the eager
optimisation APIs (``quantize_dynamic``, ``torch.nn.utils.prune``, training) accept. Both
are first brought to an ``ExportedProgram`` (a torch.export archive is one already, loaded
with the weights-only unpickler as the worker does; a TorchScript module goes through
torch's TorchScript-to-export converter, ``torch._export.converter.TS2EPConverter``, a
private API), whose ``module()`` is an FX graph. Each ``aten.linear`` on stored weights
is then replaced by a real ``nn.Linear`` holding them, so the optimisers find the layers
they know. Everything else in the graph stays as it was exported.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import fx, nn

from services.optimize.errors import TechniqueNotApplicable

TORCH_BACKENDS = ("torchscript", "torch_export")


def load_program(path: Path, backend: str, sample: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """The artifact as an ExportedProgram (CPU, float32)."""
    # The same checks as the worker's: loading an unchecked torch artifact can run its code.
    from services.worker.engines import torch_archives

    if backend == "torch_export":
        from services.worker.engines.torch_export import _weights_only_loads

        archive = torch_archives.read_export_archive(str(path))
        with _weights_only_loads():
            return torch.export.load(archive)
    if backend == "torchscript":
        from torch._export.converter import TS2EPConverter

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(torch_archives.read_torchscript_archive(str(path)), map_location="cpu")
            torch_archives.check_torchscript_module(module, str(path))
            try:
                return TS2EPConverter(module, sample).convert()
            except Exception as exc:
                raise TechniqueNotApplicable(
                    f"torch's TorchScript converter cannot turn {path.name} into an editable program ({exc}); "
                    "register a torch_export version of the model to optimise it"
                ) from exc
    raise TechniqueNotApplicable(f"backend {backend} is not a torch artifact ({' or '.join(TORCH_BACKENDS)})")


def to_eager(program: torch.export.ExportedProgram, input_names: list[str]) -> fx.GraphModule:
    """An FX module equivalent to ``program`` with its linear layers as ``nn.Linear``.

    Placeholders are renamed to the config's input names, so artifacts saved from the
    module take arguments named like the config (the engines match them by name).
    """
    module = program.module()
    graph = module.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) == len(input_names):
        for node, name in zip(placeholders, input_names, strict=True):
            node.name = node.target = name
    for node in list(graph.nodes):
        # The exporter's shape guards pin the example's shapes; candidates are re-exported
        # with their own, so the guards go.
        if node.op == "call_module" and str(node.target).startswith("_guards"):
            graph.erase_node(node)
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.linear.default:
            continue
        weight_node = node.args[1]
        bias_node = node.args[2] if len(node.args) > 2 else None
        if getattr(weight_node, "op", None) != "get_attr" or (bias_node is not None and bias_node.op != "get_attr"):
            continue
        weight = _attr(module, weight_node.target)
        bias = _attr(module, bias_node.target) if bias_node is not None else None
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        name = str(weight_node.target).rsplit(".", 1)[0].replace(".", "_") or f"linear{count}"
        module.add_submodule(name, layer)
        with graph.inserting_before(node):
            replacement = graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        count += 1
    graph.eliminate_dead_code()
    module.delete_all_unused_submodules()
    module.recompile()
    for node in graph.nodes:
        if node.op == "get_attr" and not node.users:
            graph.erase_node(node)
    # A plain GraphModule: the exporter's own module class refuses eval() and train().
    eager = fx.GraphModule(module, graph)
    eager.eval()
    return eager


def linear_layers(module: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Linear)]


def require_linear(module: nn.Module, technique: str) -> list[tuple[str, nn.Linear]]:
    layers = linear_layers(module)
    if not layers:
        raise TechniqueNotApplicable(f"{technique}: the model has no linear layers to work on")
    return layers


def _attr(module: nn.Module, target: str) -> torch.Tensor:
    value: object = module
    for part in target.split("."):
        value = getattr(value, part)
    if not isinstance(value, torch.Tensor):
        raise TechniqueNotApplicable(f"{target} is not a tensor")
    return value.detach().float()
