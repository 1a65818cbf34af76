"""What each benchmark call sends: the payload and the metadata, fixed or varied per call.

By default every call sends one request built once, which is the cheapest for the client
but measures only the cache when the router's cache is on, skips shadows that need fresh
inputs, and pins every call to one sticky version. The options here vary it:

- ``--input FILE``: requests cut from a file's rows (``.npz``, one array per input name),
  each call the next one, cycling;
- ``--random-inputs``: fresh random values on every call (built in the client process, so
  it costs client CPU: check the client is not the bottleneck);
- ``--vary-header NAME``: header NAME gets a fresh value on every call (a new simulated
  user each time, for sticky splits); with ``--users N`` it takes N stable values
  instead (``bench-user-0`` …), the calls made on behalf of those users in turn, so each
  simulated user keeps its value, and so its variant, for the whole run;
- ``-H KEY=VALUE``: extra metadata on every call, as ghz's ``-m``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.bench.payload import NUMPY_DTYPES, InputPlan, build_request, make_inputs


class RequestError(ValueError):
    """An option describing the requests is wrong (the message names it)."""


@dataclass(frozen=True)
class RequestSpec:
    """Plain data (it crosses process boundaries) describing every call's request."""

    #: Serialized ModelInferRequests sent in turn (one unless ``--input`` gave several).
    payloads: tuple[bytes, ...]
    metadata: tuple[tuple[str, str], ...] = ()
    #: Header given a fresh value per call; empty: none.
    vary_header: str = ""
    #: With ``vary_header``: this many simulated users, each with one stable value; 0: a fresh value per call.
    users: int = 0
    #: With ``random_inputs``: the model, version and input plans each fresh request needs.
    random_inputs: bool = False
    model: str = ""
    model_version: str = ""
    input_plans: tuple[InputPlan, ...] = ()


class RequestSource:
    """Hands out (payload, metadata) for one client process's calls."""

    def __init__(self, spec: RequestSpec, seed: int, tag: str) -> None:
        self._spec = spec
        self._payloads = itertools.cycle(spec.payloads)
        self._rng = np.random.default_rng(seed)
        self._counter = itertools.count()
        self._tag = tag
        self._fixed = (spec.metadata or None) if not spec.vary_header else None
        self.varies = spec.random_inputs or bool(spec.vary_header) or len(spec.payloads) > 1
        self._users = itertools.cycle(range(spec.users)) if spec.vary_header and spec.users > 0 else None

    def next(self) -> tuple[bytes, tuple[tuple[str, str], ...] | None]:
        payload, metadata, _user = self.next_call()
        return payload, metadata

    def next_call(self) -> tuple[bytes, tuple[tuple[str, str], ...] | None, int | None]:
        """(payload, metadata, simulated user index or None) for the next call."""
        spec = self._spec
        if spec.random_inputs:
            arrays = make_inputs(spec.input_plans, self._rng)
            payload = build_request(spec.model, spec.model_version, spec.input_plans, arrays).SerializeToString()
        else:
            payload = next(self._payloads)
        if not spec.vary_header:
            return payload, self._fixed, None
        if self._users is not None:
            user = next(self._users)
            return payload, (*spec.metadata, (spec.vary_header, user_value(user))), user
        return payload, (*spec.metadata, (spec.vary_header, f"bench-{self._tag}-{next(self._counter)}")), None


def user_value(user: int) -> str:
    """The header value of simulated user ``user`` (the same in every process and run)."""
    return f"bench-user-{user}"


def parse_metadata(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``KEY=VALUE`` (or ``KEY: VALUE``, as ghz and grpcurl write it) pairs as gRPC metadata."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            key, sep, value = item.partition(":")
        key, value = key.strip().lower(), value.strip()
        if not sep or not key:
            raise RequestError(f"-H {item!r} is not KEY=VALUE")
        if key.startswith("grpc-") or key.endswith("-bin"):
            raise RequestError(f"-H {key}: reserved or binary metadata keys are not supported")
        out.append((key, value))
    return tuple(out)


def payloads_from_file(path: Path, model: str, version: str, plans: Sequence[InputPlan],
                       batched: bool) -> tuple[bytes, ...]:
    """One serialized request per ``batch_rows`` rows of an ``.npz`` file's arrays.

    The file holds one array per input name (a file with one array fits a one-input model
    whatever the array is called). With a batched model the first axis is rows; each
    request takes the next ``batch_rows`` of them (rows left over are dropped).
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise RequestError(f"--input {path}: cannot read it as .npz ({exc})") from None
    if len(arrays) == 1 and len(plans) == 1:
        arrays = {plans[0].name: next(iter(arrays.values()))}
    missing = [p.name for p in plans if p.name not in arrays]
    if missing:
        raise RequestError(f"--input {path}: no array for input(s) {', '.join(missing)} (has: {', '.join(arrays)})")
    if not batched:
        whole = {p.name: as_datatype(arrays[p.name], p.datatype) for p in plans}
        shaped = [InputPlan(p.name, p.datatype, tuple(whole[p.name].shape)) for p in plans]
        return (build_request(model, version, shaped, whole).SerializeToString(),)
    rows = plans[0].shape[0]
    counts = {len(arrays[p.name]) for p in plans}
    if len(counts) != 1:
        raise RequestError(f"--input {path}: the arrays have different row counts {sorted(counts)}")
    total = counts.pop()
    if total < rows:
        raise RequestError(f"--input {path}: {total} row(s), fewer than --batch-rows {rows}")
    payloads = []
    for start in range(0, total - rows + 1, rows):
        chunk = {plan.name: as_datatype(arrays[plan.name][start:start + rows], plan.datatype) for plan in plans}
        shaped = [InputPlan(p.name, p.datatype, tuple(chunk[p.name].shape)) for p in plans]
        payloads.append(build_request(model, version, shaped, chunk).SerializeToString())
    return tuple(payloads)


def as_datatype(array: np.ndarray, datatype: str) -> np.ndarray:
    """The file's array in the input's datatype (BYTES: an object array of bytes items)."""
    if datatype == "BYTES":
        items = [x.encode() if isinstance(x, str) else bytes(x) for x in array.reshape(-1).tolist()]
        out = np.empty(len(items), dtype=np.object_)
        out[:] = items
        return out.reshape(array.shape)
    return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype])
