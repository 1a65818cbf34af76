"""Checks a torch artifact must pass before torch reads it, because reading runs code.

``torch.export.load`` is not a data loader. In torch 2.13 it unpickles
``data/constants/opaque_obj_*`` with plain ``pickle.loads``, ``torch.load``s pickled weights
and constants with ``weights_only=False``, dlopens compiled AOTInductor libraries under
``data/aotinductor/``, hands every symbolic-shape string to ``sympy.sympify`` (an ``eval``),
``exec``s the program's ``guards_code`` when the module is built, and turns any node target
spelt ``torch.<attr>.<attr>`` into a call of that attribute (``torch.os.system`` included).
``torch.jit.load`` runs a module's TorchScript ``__setstate__`` while it loads, and
TorchScript can call ``aten::save``, which pickles to any path it names.

So before torch sees the bytes, ``check_export_archive`` accepts an archive only when every
member is one torch writes for a plain exported program, every tensor is stored raw, the
sample inputs pass the weights-only unpickler, every node calls a registered operator that
touches no file, every symbolic expression is arithmetic over symbols, and every guard is a
comparison of input sizes. ``check_torchscript_archive`` refuses TorchScript code that names
a file-touching operator, and ``check_torchscript_module`` walks the loaded module's graphs
for the same operators. Anything else is refused with the member or node that failed: an
operator who needs more loads the model through a python handler in a trusted repository.

The archive is read into memory once and torch loads those same bytes, so the file cannot
change between the check and the load.
"""

from __future__ import annotations

import ast
import io
import json
import math
import operator
import re
import tokenize
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import torch

from services.worker.engines.base import EngineLoadError, UnsafeArtifact

__all__ = [
    "FORBIDDEN_NAMESPACES",
    "FORBIDDEN_OPERATORS",
    "UnsafeArtifact",
    "check_export_archive",
    "check_torchscript_archive",
    "check_torchscript_module",
    "operator_forbidden",
    "read_export_archive",
    "read_torchscript_archive",
]


#: Operators no model artifact may call: they read or write files named by the model, or
#: reach other processes. Whole namespaces in the second set.
FORBIDDEN_OPERATORS = frozenset({"aten::save", "aten::from_file"})
FORBIDDEN_NAMESPACES = frozenset(
    {"debugprims", "c10d", "_c10d_functional", "_c10d_functional_autograd", "symm_mem"}
)
#: Identifiers that can only name those operators in serialized TorchScript code, and the
#: TorchBind classes that reach other processes or device libraries.
_FORBIDDEN_TS_NAMES = frozenset({"save", "from_file", "load_tensor", "dist_rpc", "_nnapi", *FORBIDDEN_NAMESPACES})


def operator_forbidden(qualified_name: str) -> bool:
    """True for ``ns::name`` (or ``ns::name.overload``) operators models may not call."""
    namespace, _, rest = qualified_name.partition("::")
    return namespace in FORBIDDEN_NAMESPACES or f"{namespace}::{rest.partition('.')[0]}" in FORBIDDEN_OPERATORS


# -- torch.export archives ----------------------------------------------------------------

#: The program torch.export.load returns; other programs in an archive are refused.
_MODEL = "model"
_FIXED_MEMBERS = frozenset(
    {
        "archive_format",
        "archive_version",
        "byteorder",
        ".data/version",
        ".data/serialization_id",
        f"models/{_MODEL}.json",
        f"data/weights/{_MODEL}_weights_config.json",
        f"data/constants/{_MODEL}_constants_config.json",
        f"data/sample_inputs/{_MODEL}.pt",
    }
)
_WEIGHT_MEMBER = re.compile(r"data/weights/weight_\d+")
_CONSTANT_MEMBER = re.compile(r"data/constants/tensor_\d+")
_EXTRA_MEMBER = re.compile(r"extra/[\w.-]+")
#: Why a member torch would read is refused, by where it lives.
_REFUSED_PREFIXES = (
    ("data/aotinductor/", "compiled AOTInductor code (a native library torch would load)"),
    ("data/constants/opaque_obj_", "an opaque object torch reads with plain pickle"),
    ("data/constants/custom_obj_", "a custom (TorchBind) object"),
    ("data/executorch/", "ExecuTorch code"),
    ("data/mtia", "MTIA code"),
    ("xl_model_weights/", "external weights"),
)
#: Nesting deeper than this in models/model.json is refused (a plain program is ~10 deep).
_MAX_JSON_DEPTH = 200

#: Functions a symbolic-shape expression may call: sympy's classes as srepr writes them,
#: and torch's shape helpers.
_SYMPY_CALLS = frozenset(
    {
        "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "StrictLessThan", "LessThan",
        "StrictGreaterThan", "GreaterThan", "Equality", "Unequality", "ExprCondPair", "Tuple",
        "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
        "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
        "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
        "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "Max", "Min", "Abs", "Eq", "Ne",
        "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "floor", "ceiling", "sqrt", "Piecewise", "ITE",
    }
)  # fmt: skip
_SYMBOL = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
#: What names, keys and other plain strings in a program may be made of.
_PLAIN = re.compile(r"[A-Za-z0-9_.+]*")
#: Python operators a node target may name (torch's symbolic-int arithmetic).
_OPERATOR_TARGETS = frozenset(
    {
        "eq", "ne", "le", "ge", "lt", "gt", "neg", "pos", "mul", "add", "sub", "floordiv", "mod",
        "pow", "truediv", "and_", "or_", "lshift", "rshift", "getitem",
    }
)
_TORCH_SYM_TARGETS = frozenset({"sym_not", "sym_int", "sym_float", "sym_ite", "sym_max", "sym_min", "sym_sqrt"})
_GUARD_SOURCE = r"L(?:\['[A-Za-z][A-Za-z0-9_]*'\]|\[\d+\])+(?:\.size\(\)\[\d+\])?"
_GUARD = re.compile(rf"{_GUARD_SOURCE} (?:==|!=|<=|>=|<|>) (?:-?\d+|{_GUARD_SOURCE})")


def _read_checked(path: str, check: Callable[[bytes, str], None]) -> io.BytesIO:
    """The file's bytes once ``check`` passed them: torch loads this buffer, not the path."""
    with open(path, "rb") as fh:
        data = fh.read()
    check(data, path)
    return io.BytesIO(data)


def _open_zip(data: bytes, where: str, what: str) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        return archive, archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise EngineLoadError(f"{where}: not a {what} archive (not a zip file: {exc})") from None


def read_export_archive(path: str) -> io.BytesIO:
    """The archive's bytes, checked: hand the returned buffer to ``torch.export.load``."""
    return _read_checked(path, check_export_archive)


def check_export_archive(data: bytes, where: str) -> None:
    """Raise UnsafeArtifact unless ``data`` is a plain torch.export archive (see module doc)."""
    archive, infos = _open_zip(data, where, "torch.export")
    members = _members(infos, where)
    for name, info in members.items():
        if info.compress_type != zipfile.ZIP_STORED:
            raise UnsafeArtifact(f"{where}: member {name} is compressed; torch.export.save stores members raw")
        for prefix, why in _REFUSED_PREFIXES:
            if name.startswith(prefix):
                raise UnsafeArtifact(f"{where}: refusing member {name}: {why}")
        if not (
            name in _FIXED_MEMBERS
            or _WEIGHT_MEMBER.fullmatch(name)
            or _CONSTANT_MEMBER.fullmatch(name)
            or _EXTRA_MEMBER.fullmatch(name)
        ):
            raise UnsafeArtifact(f"{where}: unexpected member {name} (not part of a plain torch.export archive)")
    for required in ("archive_version", f"models/{_MODEL}.json"):
        if required not in members:
            raise EngineLoadError(f"{where}: not a torch.export archive (no {required})")

    def read(name: str) -> bytes:
        return archive.read(members[name])

    raw_tensors = {name for name in members if _WEIGHT_MEMBER.fullmatch(name) or _CONSTANT_MEMBER.fullmatch(name)}
    for kind in ("weights", "constants"):
        config_name = f"data/{kind}/{_MODEL}_{kind}_config.json"
        if config_name in members:
            _check_payload_config(_load_json(read(config_name), f"{where}: {config_name}"), kind, raw_tensors, where)
    sample = f"data/sample_inputs/{_MODEL}.pt"
    if sample in members and members[sample].file_size:
        _check_weights_only(read(sample), f"{where}: {sample}")
    program = _load_json(read(f"models/{_MODEL}.json"), f"{where}: models/{_MODEL}.json")
    _check_program(program, where)


def _members(infos: list[zipfile.ZipInfo], where: str) -> dict[str, zipfile.ZipInfo]:
    """Members by their name under the archive's one top-level folder (how torch reads them)."""
    roots = {info.filename.partition("/")[0] for info in infos}
    if len(roots) != 1 or any("/" not in info.filename for info in infos):
        raise UnsafeArtifact(f"{where}: a torch.export archive has every member under one top-level folder")
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename.partition("/")[2]
        parts = name.split("/")
        if info.is_dir() or not name or ".." in parts or "" in parts or "\\" in name:
            raise UnsafeArtifact(f"{where}: member name {info.filename!r} is not a plain relative path")
        if name in members:
            raise UnsafeArtifact(f"{where}: member {name} appears twice")
        members[name] = info
    return members


def _load_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise EngineLoadError(f"{where}: not valid JSON: {exc}") from None


def _check_payload_config(config: Any, kind: str, raw_tensors: set[str], where: str) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise EngineLoadError(f"{where}: {kind} config has no 'config' mapping")
    prefix = "weight_" if kind == "weights" else "tensor_"
    for fqn, meta in entries.items():
        if not isinstance(meta, dict):
            raise EngineLoadError(f"{where}: {kind} entry {fqn!r} is not a mapping")
        if not _PLAIN.fullmatch(fqn):
            raise UnsafeArtifact(f"{where}: {kind} entry {fqn!r} is not a plain dotted name")
        path_name = meta.get("path_name")
        if meta.get("use_pickle"):
            raise UnsafeArtifact(
                f"{where}: {kind} entry {fqn!r} is pickled ({path_name}); only raw tensors are loaded "
                "(tensor subclasses and custom objects are refused)"
            )
        if not isinstance(path_name, str) or not path_name.startswith(prefix):
            raise UnsafeArtifact(f"{where}: {kind} entry {fqn!r} names {path_name!r}, not a raw {prefix}N tensor")
        if f"data/{kind}/{path_name}" not in raw_tensors:
            raise EngineLoadError(f"{where}: {kind} entry {fqn!r} names {path_name}, which is not in the archive")


def _check_weights_only(data: bytes, where: str) -> None:
    """Refuse a pickle the weights-only unpickler rejects.

    torch tries ``weights_only=True`` first and falls back to full pickle only when that
    fails, so bytes that pass here never reach the fallback.
    """
    try:
        torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeArtifact(f"{where}: needs more than the weights-only unpickler ({first})") from None


def _check_program(program: Any, where: str) -> None:
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise EngineLoadError(f"{where}: models/{_MODEL}.json is not a serialized exported program")
    for guard in program.get("guards_code") or []:
        if not isinstance(guard, str) or not _guard_ok(guard):
            raise UnsafeArtifact(f"{where}: guard {guard!r} is not a comparison of input sizes")
    graph = program["graph_module"].get("graph")
    for entry in (graph or {}).get("inputs", []) if isinstance(graph, dict) else []:
        if isinstance(entry, dict) and "as_string" in entry:
            # A string input's value is pasted into generated guard code.
            raise UnsafeArtifact(f"{where}: the program takes a string input ({entry['as_string']!r})")
    try:
        _check_strings(program, where)
        for mapping in _mappings(program):
            if isinstance(mapping.get("target"), str) and "inputs" in mapping:  # a graph node
                _check_target(mapping["target"], where)
            if "as_operator" in mapping:
                _check_target(mapping["as_operator"], where)
            if "expr_str" in mapping:
                value = mapping["expr_str"]
                if not isinstance(value, str) or not _expression_ok(value):
                    raise UnsafeArtifact(f"{where}: symbolic expression {value!r} is not arithmetic over symbols")
    except RecursionError:
        raise UnsafeArtifact(f"{where}: models/{_MODEL}.json nests too deeply") from None


def _check_strings(value: Any, where: str, depth: int = 0) -> None:
    """Every name in the program must be plain: torch pastes them into generated Python.

    ``ExportedProgram.module()`` writes the module's forward as source and ``exec``s it:
    parameter and buffer names go into ``getattr(self, "...")`` unescaped, input names
    into the ``def`` line, pytree keys into quoted literals, and the stack trace into a
    comment. So every string (and mapping key) must be dotted identifier characters,
    except operator string arguments (written with ``repr``), node metadata (free text,
    but no carriage return, which would end the comment), the pytree specs (JSON, whose
    strings obey the same rule) and the expressions and guards checked on their own.
    """
    if depth > _MAX_JSON_DEPTH:
        raise RecursionError
    if isinstance(value, list):
        for item in value:
            _check_strings(item, where, depth + 1)
        return
    if isinstance(value, str):
        if not _PLAIN.fullmatch(value):
            raise UnsafeArtifact(f"{where}: name {value!r} is not plain (letters, digits, '_', '.', '+')")
        return
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        if not _PLAIN.fullmatch(key):
            raise UnsafeArtifact(f"{where}: key {key!r} is not plain (letters, digits, '_', '.', '+')")
        if key in ("as_string", "as_strings"):
            continue  # repr'd into generated code
        if key in ("expr_str", "guards_code"):
            continue  # checked by _expression_ok / _guard_ok
        if key == "metadata" and isinstance(item, dict):
            for text in item.values():
                if isinstance(text, str) and ("\r" in text or "\x00" in text):
                    raise UnsafeArtifact(f"{where}: node metadata holds a carriage return or NUL")
            continue
        if key in ("in_spec", "out_spec") and isinstance(item, str):
            _check_strings(_spec_json(item, where), where, depth + 1)
            continue
        _check_strings(item, where, depth + 1)


def _spec_json(text: str, where: str) -> Any:
    """A serialized pytree spec, with the JSON strings nested in it (contexts) decoded too."""
    try:
        value = json.loads(text)
    except ValueError:
        raise UnsafeArtifact(f"{where}: pytree spec {text[:80]!r} is not JSON") from None

    def decode(item: Any) -> Any:
        if isinstance(item, dict):
            return {k: decode(v) for k, v in item.items()}
        if isinstance(item, list):
            return [decode(v) for v in item]
        if isinstance(item, str) and not _PLAIN.fullmatch(item):
            try:
                return decode(json.loads(item))
            except ValueError:
                return item  # refused by the caller, naming it
        return item

    return decode(value)


def _mappings(value: Any, depth: int = 0) -> Iterator[dict[str, Any]]:
    """Every mapping inside ``value``, outermost first."""
    if depth > _MAX_JSON_DEPTH:
        raise RecursionError
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _mappings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _mappings(item, depth + 1)


def _check_target(target: Any, where: str) -> None:
    """A node target must resolve the way torch resolves it to a registered, harmless operator."""
    resolved = _resolve_target(target) if isinstance(target, str) else None
    if resolved is None:
        raise UnsafeArtifact(f"{where}: node target {target!r} is not a registered operator")
    if isinstance(resolved, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        name = resolved._schema.name if isinstance(resolved, torch._ops.OpOverload) else resolved._qualified_op_name
        if operator_forbidden(name):
            raise UnsafeArtifact(f"{where}: node target {target} ({name}) reads or writes files or other processes")


def _resolve_target(target: str) -> object | None:
    """What torch's deserializer would call for ``target``, when it is allowed to be called."""
    head, _, rest = target.partition(".")
    if head == "_operator":
        return getattr(operator, rest) if rest in _OPERATOR_TARGETS else None
    if head == "math":
        return math.trunc if rest == "trunc" else None
    if head != "torch":
        return None
    if rest in _TORCH_SYM_TARGETS:
        return getattr(torch, rest)
    parts = rest.split(".")
    if len(parts) < 3 or parts[0] != "ops":
        return None
    try:
        value: object = torch.ops
        for part in parts[1:]:
            value = getattr(value, part)
    except (AttributeError, RuntimeError):
        return None
    if isinstance(value, torch._ops.OpOverload | torch._ops.OpOverloadPacket | torch._ops.HigherOrderOperator):
        return value
    return None


def _expression_ok(text: str) -> bool:
    """True for what ``srepr`` writes for a shape expression: ``Add(Symbol('s0', integer=True), Integer(1))``."""
    try:
        tree = ast.parse(text, mode="eval")
        return _sym_node_ok(tree.body)
    except (SyntaxError, ValueError, RecursionError):
        return False


def _sym_node_ok(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int | float) and not isinstance(node.value, bool)
    if isinstance(node, ast.Name):
        return node.id in _SYMPY_NAMES or (_SYMBOL.fullmatch(node.id) is not None)
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, ast.USub | ast.UAdd | ast.Not) and _sym_node_ok(node.operand)
    if isinstance(node, ast.BinOp):
        return isinstance(node.op, _BINARY) and _sym_node_ok(node.left) and _sym_node_ok(node.right)
    if isinstance(node, ast.Compare):
        return all(isinstance(op, _COMPARE) for op in node.ops) and all(
            _sym_node_ok(n) for n in (node.left, *node.comparators)
        )
    if isinstance(node, ast.BoolOp):
        return all(_sym_node_ok(n) for n in node.values)
    if isinstance(node, ast.Tuple):
        return all(_sym_node_ok(n) for n in node.elts)
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.func.id not in _SYMPY_CALLS:
        return False
    args = list(node.args)
    name = node.func.id
    if name in _SYMPY_LEAVES:
        # Symbol('s0', integer=True), Float('1.5', precision=53): the one place a string may be.
        if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
            if not _SYMPY_LEAVES[name].fullmatch(args[0].value):
                return False
            args = args[1:]
        for keyword in node.keywords:
            if keyword.arg not in _SYMPY_KEYWORDS or not (
                isinstance(keyword.value, ast.Constant) and isinstance(keyword.value.value, bool | int)
            ):
                return False
    elif node.keywords:
        return False
    return all(_sym_node_ok(arg) for arg in args)


_BINARY = (
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.LShift, ast.RShift,
    ast.BitAnd, ast.BitOr,
)  # fmt: skip
_COMPARE = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
#: Calls that take a string (and assumptions) in srepr output, and what the string may be.
_SYMPY_LEAVES = {
    "Symbol": _SYMBOL,
    "Float": re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|nan"),
}
_SYMPY_KEYWORDS = frozenset(
    {
        "integer", "positive", "negative", "nonnegative", "nonpositive", "real", "finite", "infinite",
        "zero", "nonzero", "even", "odd", "rational", "extended_real", "precision", "commutative",
    }
)  # fmt: skip
_SYMPY_NAMES = frozenset({"oo", "zoo", "nan", "true", "false", "int_oo", "pi", "E"})


def _guard_ok(text: str) -> bool:
    """Only the guards torch writes for sizes: ``L['x'].size()[0] <= 64``, ``... == L['y'].size()[1]``.

    Guards are pasted into generated code (twice, once inside a string literal) and
    ``exec``'d, with input paths substituted by plain text replacement, so nothing looser
    than this shape is safe to accept.
    """
    return _GUARD.fullmatch(text) is not None


# -- TorchScript archives ------------------------------------------------------------------


def read_torchscript_archive(path: str) -> io.BytesIO:
    """The archive's bytes, checked: hand the returned buffer to ``torch.jit.load``."""
    return _read_checked(path, check_torchscript_archive)


def check_torchscript_archive(data: bytes, where: str) -> None:
    """Refuse TorchScript code that names a forbidden operator, before any of it runs.

    Loading runs a module's ``__setstate__``; the code is Python syntax, so its
    identifiers are read with ``tokenize`` and none may be one that only those operators
    use (``torch.save``, ``torch.from_file``, ``ops.debugprims...``).
    """
    archive, infos = _open_zip(data, where, "TorchScript")
    for info in infos:
        if "/code/" not in f"/{info.filename}" or not info.filename.endswith(".py"):
            continue
        text = archive.read(info).decode("utf-8", errors="replace")
        try:
            tokens = tokenize.generate_tokens(io.StringIO(text).readline)
            names = {tok.string for tok in tokens if tok.type == tokenize.NAME}
        except (tokenize.TokenError, SyntaxError) as exc:
            raise UnsafeArtifact(f"{where}: TorchScript code {info.filename} cannot be read: {exc}") from None
        bad = sorted(names & _FORBIDDEN_TS_NAMES)
        if bad:
            raise UnsafeArtifact(
                f"{where}: TorchScript code {info.filename} names {', '.join(bad)} "
                "(operators that read or write files are refused)"
            )


def check_torchscript_module(module: torch.jit.ScriptModule, where: str) -> None:
    """Walk every method of every submodule for forbidden operators (after the text check)."""
    for prefix, submodule in module.named_modules():
        for method_name in submodule._c._method_names():
            graph = getattr(submodule, method_name).inlined_graph
            for node in graph.nodes():
                if operator_forbidden(node.kind()):
                    qualified = f"{prefix}.{method_name}" if prefix else method_name
                    raise UnsafeArtifact(f"{where}: method {qualified} calls {node.kind()}, which is refused")
