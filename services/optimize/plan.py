"""``--try`` items -> techniques, checked against the backend before anything is built.

Items are comma-separated; a technique's own options follow a colon and are
comma-separated too (``distill:width=0.5,epochs=20``): a comma-separated piece that does
not start a known technique belongs to the item before it.

    quantize-dynamic | quantize-static[:calibrate=ROWS] | fp16
    prune:AMOUNT | prune-structured:AMOUNT[,finetune=EPOCHS]
    distill[:width=W,depth=D,epochs=N,T=TEMP,alpha=A,lr=LR] | distill:arch=NAME[,epochs=...]
        (arch: the student built by NAME.py from --trusted-dir)
    compile:onnx | compile:torchscript | compile:torch_export | compile:tensorrt
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.optimize.errors import OptimizeError, TechniqueNotApplicable
from services.optimize.lift import TORCH_BACKENDS
from services.optimize.techniques.base import Built, Context

NAMES = ("quantize-dynamic", "quantize-static", "fp16", "prune-structured", "prune", "distill", "compile")
COMPILE_TARGETS = ("onnx", "torchscript", "torch_export", "tensorrt")
DISTILL_DEFAULTS: dict[str, float] = {"width": 0.5, "depth": 0, "epochs": 30, "T": 4.0, "alpha": 0.7, "lr": 3e-3}


@dataclass(frozen=True)
class Technique:
    #: The item as given (a candidate's name in the report).
    label: str
    family: str
    params: dict[str, Any] = field(default_factory=dict)

    def build(self, ctx: Context, out_dir: Path) -> Built:
        return _builder(self, ctx.backend)(ctx, out_dir)


def parse_try(text: str, backend: str) -> list[Technique]:
    """Parse and check every item; raise OptimizeError naming the first bad one."""
    items: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if piece.split(":", 1)[0] in NAMES or not items:
            items.append(piece)
        else:
            items[-1] += "," + piece
    if not items:
        raise OptimizeError("--try names no technique")
    techniques = [_parse_item(item) for item in items]
    labels = [t.label for t in techniques]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise OptimizeError(f"--try names {', '.join(dupes)} more than once")
    for technique in techniques:
        _builder(technique, backend)  # raises TechniqueNotApplicable with the reason
    return techniques


def _parse_item(item: str) -> Technique:
    name, _, rest = item.partition(":")
    if name not in NAMES:
        raise OptimizeError(f"unknown technique {name!r} in --try (known: {', '.join(sorted(NAMES))})")
    options = [o for o in rest.split(",") if o] if rest else []
    if name == "compile":
        if len(options) != 1 or options[0] not in COMPILE_TARGETS:
            raise OptimizeError(f"{item}: compile needs one target: {' | '.join(COMPILE_TARGETS)}")
        return Technique(item, f"compile:{options[0]}")
    if name in ("prune", "prune-structured"):
        if not options:
            raise OptimizeError(f"{item}: {name} needs an amount, e.g. {name}:0.3")
        amount = _number(item, "amount", options[0])
        if not 0 < amount < 1:
            raise OptimizeError(f"{item}: the amount must be between 0 and 1, got {amount}")
        extra = {"finetune": 0} if name == "prune-structured" else {}
        params = {"amount": amount, **extra, **_keyed(item, options[1:], extra)}
        return Technique(item, name, params)
    if name == "distill":
        arch = [o for o in options if o.startswith("arch=")]
        distill: dict[str, Any] = {**DISTILL_DEFAULTS, "arch": None}
        distill.update(_keyed(item, [o for o in options if not o.startswith("arch=")], DISTILL_DEFAULTS))
        if arch:
            module = arch[-1].partition("=")[2]
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", module):
                raise OptimizeError(f"{item}: arch must name a module in --trusted-dir, e.g. arch=small_mlp")
            distill["arch"] = module
        return Technique(item, name, distill)
    if name == "quantize-static":
        return Technique(item, name, {"calibrate": 128, **_keyed(item, options, {"calibrate": 128})})
    if options:
        raise OptimizeError(f"{item}: {name} takes no options")
    return Technique(item, name)


def _keyed(item: str, options: list[str], allowed: dict[str, Any]) -> dict[str, float]:
    values = {}
    for option in options:
        key, eq, value = option.partition("=")
        if not eq or key not in allowed:
            known = ", ".join(f"{k}=" for k in allowed) or "none"
            raise OptimizeError(f"{item}: unknown option {option!r} (options: {known})")
        values[key] = _number(item, key, value)
    return values


def _number(item: str, key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise OptimizeError(f"{item}: {key} must be a number, got {value!r}") from None


def _builder(t: Technique, backend: str) -> Callable[[Context, Path], Built]:
    from services.optimize.techniques import compile as comp
    from services.optimize.techniques import onnx_quant, tensorrt

    is_torch = backend in TORCH_BACKENDS
    if backend not in (*TORCH_BACKENDS, "onnx"):
        raise TechniqueNotApplicable(f"{t.label}: backend {backend} cannot be optimised (torch or ONNX models only)")
    if t.family in ("prune", "prune-structured", "distill") and not is_torch:
        raise TechniqueNotApplicable(
            f"{t.label}: {t.family} edits a torch module, and this version is an {backend} artifact; "
            "run it on a torchscript or torch_export version of the model (ONNX models: quantize-dynamic, "
            "quantize-static, compile:onnx)"
        )
    if t.family in ("compile:torchscript", "compile:torch_export") and not is_torch:
        raise TechniqueNotApplicable(f"{t.label}: cannot turn an {backend} artifact back into a torch program")
    if t.family == "quantize-dynamic":
        if is_torch:
            from services.optimize.techniques.torch_quant_prune import quantize_dynamic

            return quantize_dynamic
        return onnx_quant.quantize_dynamic_onnx
    if t.family == "quantize-static":
        return lambda ctx, out: onnx_quant.quantize_static_onnx(ctx, out, int(t.params["calibrate"]))
    if t.family == "prune":
        from services.optimize.techniques.torch_quant_prune import prune_unstructured

        return lambda ctx, out: prune_unstructured(ctx, out, t.params["amount"])
    if t.family == "prune-structured":
        from services.optimize.techniques.torch_quant_prune import prune_structured

        return lambda ctx, out: prune_structured(ctx, out, t.params["amount"], int(t.params["finetune"]))
    if t.family == "distill":
        from services.optimize.techniques.distill import distill

        p = t.params
        return lambda ctx, out: distill(ctx, out, p["width"], int(p["epochs"]), p["T"], p["alpha"], p["lr"],
                                        p["arch"], int(p["depth"]))
    builders: dict[str, Callable[[Context, Path], Built]] = {
        "fp16": comp.fp16,
        "compile:onnx": comp.compile_onnx,
        "compile:torchscript": comp.compile_torchscript,
        "compile:torch_export": comp.compile_torch_export,
        "compile:tensorrt": tensorrt.compile_tensorrt,
    }
    return builders[t.family]
