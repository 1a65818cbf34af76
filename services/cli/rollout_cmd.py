"""`shunter rollout ...` and `shunter traffic switch|rollback|history`: progressive delivery.

A rollout is started once and then runs by itself in the registry (its controller judges
every interval, advances, pauses, rolls back or promotes); these commands start, watch,
pause, resume, abort it and read its history. Blue-green is `traffic switch` (100 % to a
version in one write) and `traffic rollback` (the policy before the last change); every
policy change is in `traffic history`.

Exit status: 0 done; 1 the registry refused (the message names why; nothing changed);
2 a malformed command line (bad --steps or --interval), refused before any call.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from services.cli import tls_args
from services.cli.admin_cmds import common_parser, emit_json, policy_summary, print_policy, table, when

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
MIN_INTERVAL_S = 1.0


class UsageError(Exception):
    """A malformed command line (exit 2), found before calling the registry."""


def parse_duration(text: str, flag: str = "--interval") -> float:
    match = _DURATION_RE.match(text.strip())
    if not match:
        raise UsageError(f"{flag} {text!r} is not a duration (e.g. 30s, 2m, 1500ms)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--steps {text!r} is not a comma-separated list of percents (e.g. 5,25,50,100)") from None
    if not steps:
        raise UsageError("--steps is empty")
    for step in steps:
        if not 1 <= step <= 100:
            raise UsageError(f"--steps: {step} is not a percent between 1 and 100")
    for earlier, later in itertools.pairwise(steps):
        if later <= earlier:
            raise UsageError(f"--steps must increase: {later} comes after {earlier}")
    return steps


# ---- parser ------------------------------------------------------------------------------



def register(subparsers: argparse._SubParsersAction) -> None:
    common = common_parser()
    help_text = "canary rollouts gated on live error rate and latency, with automatic rollback"
    parser = subparsers.add_parser("rollout", help=help_text, description=help_text)
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    def leaf(name: str, handler: Callable, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        p.add_argument("model", metavar="MODEL")
        p.set_defaults(func=lambda args: run(handler, args))
        return p

    p = leaf("start", rollout_start, "start a canary of a version; it advances, rolls back or promotes by itself")
    p.add_argument("--to", required=True, metavar="V", help="the version to roll out")
    p.add_argument("--baseline", default="", metavar="B", help="compare against B (default: highest weight now)")
    p.add_argument("--steps", default="5,25,50,100", help="canary percent per step (default 5,25,50,100)")
    p.add_argument("--interval", default="30s", help="time per step before it is judged (default 30s; at least 1s)")
    p.add_argument("--max-error-rate-increase", type=float, default=0.01,
                   help="allowed error-rate increase over the baseline, tested for significance (default 0.01)")
    p.add_argument("--max-p99-ratio", type=float, default=1.5, help="allowed canary/baseline p99 (default 1.5)")
    p.add_argument("--max-drift", type=float, default=0.2, help="allowed drift score, when one exists (default 0.2)")
    p.add_argument("--min-requests", type=int, default=200,
                   help="requests each side needs before a step is judged (default 200)")
    p.add_argument("--failure-limit", type=int, default=1, help="failed steps in total that roll back (default 1)")
    p.add_argument("--consecutive-failure-limit", type=int, default=1,
                   help="failed steps in a row that roll back (default 1)")
    leaf("status", rollout_status, "show a model's current or last rollout")
    leaf("pause", rollout_pause, "pause the running rollout (weights stay where they are)")
    leaf("resume", rollout_resume, "resume a paused rollout (a fresh window)")
    leaf("abort", rollout_abort, "abort: the baseline back to 100%% in one write")
    leaf("history", rollout_history, "every decision of a model's rollouts, with its evidence")

    help_text = "A/B reports: per variant and against the control, with significance tests"
    parser = subparsers.add_parser("experiment", help=help_text, description=help_text)
    sub_ex = parser.add_subparsers(dest="action", metavar="ACTION")
    sub_ex.required = True
    text = "per variant: requests, error rate, p50/p95/p99; each metric tested against the control"
    p = sub_ex.add_parser("report", parents=[common], help=text, description=text)
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--since", default="1h", help="the window: the last 30m, 1h, 6h, ... (default 1h, at most 24h)")
    p.set_defaults(func=lambda args: run(experiment_report, args))

    help_text = "shadow reports: how a mirrored version's outputs compare with the primary's"
    parser = subparsers.add_parser("shadow", help=help_text, description=help_text)
    sub_sh = parser.add_subparsers(dest="action", metavar="ACTION")
    sub_sh.required = True
    text = "compared count, agreement, label flips, largest differences, latency, sampled disagreements"
    p = sub_sh.add_parser("report", parents=[common], help=text, description=text)
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--since", default="1h", help="the window: the last 30m, 1h, 6h, ... (default 1h, at most 24h)")
    p.add_argument("--samples", type=int, default=3, help="disagreements to print (default 3; --json has all kept)")
    p.set_defaults(func=lambda args: run(shadow_report, args))


def add_traffic_commands(traffic: argparse._SubParsersAction) -> None:
    """`traffic switch|rollback|history`, added to the `traffic` group of admin_cmds."""
    common = common_parser()

    def leaf(name: str, handler: Callable, text: str) -> argparse.ArgumentParser:
        p = traffic.add_parser(name, parents=[common], help=text, description=text)
        p.add_argument("model", metavar="MODEL")
        p.set_defaults(func=lambda args: run(handler, args))
        return p

    p = leaf("switch", traffic_switch, "blue-green: all traffic to a version in one write (needs a ready worker)")
    p.add_argument("version", metavar="V")
    leaf("rollback", traffic_rollback, "restore the policy in force before the last change")
    leaf("history", traffic_history, "every policy change: who, when, before, after")


def run(handler: Callable[[Any, argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    from services.common.errors import ShunterError
    from services.common.rollout_client import RolloutClient
    from services.common.tls import TlsFileError

    name = f"shunter {args.command} {args.action}"
    try:
        if not args.admin_key:
            raise UsageError("no admin key: pass --admin-key or set SHUNTER_ADMIN_KEY")
        try:
            tls = tls_args.client_tls(args)
        except tls_args.FlagError as exc:
            raise UsageError(str(exc)) from None
        request = prepare_start(args) if handler is rollout_start else None
        if handler in (experiment_report, shadow_report):
            args.since_s = parse_duration(args.since, "--since")
    except UsageError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        async with RolloutClient(args.registry, args.admin_key, timeout_s=args.timeout_s, tls=tls) as client:
            if request is not None:
                args.request = request
            return await handler(client, args)

    try:
        return asyncio.run(main())
    except TlsFileError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except ShunterError as exc:
        code = getattr(exc, "grpc_code", None)
        suffix = f" [{code.name}]" if code is not None else ""
        print(f"{name}: {exc}{suffix}", file=sys.stderr)
        return 1


# ---- rollouts ----------------------------------------------------------------------------


def prepare_start(args: argparse.Namespace) -> dict[str, Any]:
    """The start request's fields, checked: malformed ones are usage errors (exit 2)."""
    from services.gen.shunter.rollout.v1 import rollout_pb2 as opb

    interval_s = parse_duration(args.interval)
    if interval_s < MIN_INTERVAL_S:
        raise UsageError(f"--interval {args.interval} is under the minimum of {MIN_INTERVAL_S:g}s")
    for flag in ("min_requests", "failure_limit", "consecutive_failure_limit"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1")
    gates = opb.Gates(
        max_error_rate_increase=args.max_error_rate_increase, max_p99_ratio=args.max_p99_ratio,
        max_drift=args.max_drift, min_requests=args.min_requests, failure_limit=args.failure_limit,
        consecutive_failure_limit=args.consecutive_failure_limit,
    )
    return {"steps": parse_steps(args.steps), "interval_s": interval_s, "gates": gates,
            "baseline": args.baseline}


def print_rollout(rollout: Any) -> None:
    from services.registry.rollout.records import STATE_NAMES

    weight = rollout.steps[rollout.step] if rollout.steps else 0
    state = STATE_NAMES.get(rollout.state, "?")
    print(f"model:     {rollout.model}")
    print(f"rollout:   version {rollout.version} over baseline {rollout.baseline}, {state}")
    steps = " ".join(f"[{s}]" if i == rollout.step else str(s) for i, s in enumerate(rollout.steps))
    print(f"steps:     {steps} (every {rollout.interval_s:g}s)")
    if state in ("running", "paused"):
        print(f"canary:    {weight}%")
    gates = rollout.gates
    print(f"gates:     error rate +{gates.max_error_rate_increase:g}, p99 x{gates.max_p99_ratio:g}, "
          f"drift {gates.max_drift:g}, min {gates.min_requests} requests, failures {rollout.failures}/"
          f"{gates.failure_limit} ({rollout.consecutive_failures}/{gates.consecutive_failure_limit} in a row), "
          f"inconclusive {rollout.inconclusive}/{gates.max_inconclusive}")
    print(f"started:   {when(rollout.started_at_ms)} by {rollout.started_by}")
    if rollout.reason:
        print(f"reason:    {rollout.reason}")


async def rollout_start(client: Any, args: argparse.Namespace) -> int:
    rollout = await client.start_rollout(args.model, args.to, **args.request)
    if args.json:
        emit_json(rollout)
    else:
        print(f"rollout of {rollout.model} version {rollout.version} started: {rollout.steps[0]}% "
              f"(baseline {rollout.baseline}); see `shunter rollout status {rollout.model}`")
    return 0


async def rollout_status(client: Any, args: argparse.Namespace) -> int:
    rollout = await client.get_rollout(args.model)
    emit_json(rollout) if args.json else print_rollout(rollout)
    return 0


async def _change(client: Any, args: argparse.Namespace, method: str, done: str) -> int:
    rollout = await getattr(client, method)(args.model)
    if args.json:
        emit_json(rollout)
    else:
        print(f"rollout of {rollout.model} version {rollout.version} {done}")
    return 0


async def rollout_pause(client: Any, args: argparse.Namespace) -> int:
    return await _change(client, args, "pause_rollout", "paused")


async def rollout_resume(client: Any, args: argparse.Namespace) -> int:
    return await _change(client, args, "resume_rollout", "resumed")


async def rollout_abort(client: Any, args: argparse.Namespace) -> int:
    return await _change(client, args, "abort_rollout", "aborted; the baseline has 100%")


def _evidence(decision: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(decision.evidence) if decision.HasField("evidence") else {}


def _numbers(evidence: dict[str, Any]) -> str:
    def rate(key: str) -> str:
        value = evidence.get(key)
        return "-" if value is None else f"{value:.2%}"

    def ms(key: str) -> str:
        value = evidence.get(key)
        return "-" if value is None else f"{value:.1f}"

    if "canary_requests" not in evidence:
        return ""
    return (f"n {int(evidence['baseline_requests'])}/{int(evidence['canary_requests'])}  "
            f"err {rate('baseline_error_rate')}/{rate('canary_error_rate')}  "
            f"p99 {ms('baseline_p99_ms')}/{ms('canary_p99_ms')} ms")


async def rollout_history(client: Any, args: argparse.Namespace) -> int:
    decisions = await client.rollout_history(args.model)
    if args.json:
        emit_json(decisions)
        return 0
    rows = [
        (when(d.at_ms), f"{d.version}/{d.baseline}", f"{d.weight}%", d.verdict, d.outcome or "-",
         _numbers(_evidence(d)) or "-", "; ".join(d.reasons))
        for d in decisions
    ]
    table(("WHEN", "CANARY/BASE", "WEIGHT", "VERDICT", "OUTCOME", "BASELINE/CANARY", "WHY"), rows)
    return 0


# ---- blue-green --------------------------------------------------------------------------


async def traffic_switch(client: Any, args: argparse.Namespace) -> int:
    policy = await client.switch_traffic(args.model, args.version)
    emit_json(policy) if args.json else print_policy(policy)
    return 0


async def traffic_rollback(client: Any, args: argparse.Namespace) -> int:
    policy = await client.rollback_traffic(args.model)
    emit_json(policy) if args.json else print_policy(policy)
    return 0


async def traffic_history(client: Any, args: argparse.Namespace) -> int:
    changes = await client.traffic_history(args.model)
    if args.json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps([MessageToDict(c, preserving_proto_field_name=True) for c in changes], indent=2))
        return 0
    rows = [(when(c.at_ms), c.who, c.action, policy_summary(c.before) if c.HasField("before") else "-",
             policy_summary(c.after), c.reason) for c in changes]
    table(("WHEN", "WHO", "ACTION", "BEFORE", "AFTER", "WHY"), rows)
    return 0


# ---- reports -----------------------------------------------------------------------------


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.1f}"  # NaN: no successful request


async def experiment_report(client: Any, args: argparse.Namespace) -> int:
    report = await client.experiment_report(args.model, args.since_s)
    if args.json:
        emit_json(report)
        return 0
    print(f"model {report.model}, {when(report.window_start_ms)} to {when(report.window_end_ms)}, "
          f"control version {report.control or '-'}")
    table(("VERSION", "WEIGHT", "REQUESTS", "ERRORS", "ERROR RATE", "P50 MS", "P95 MS", "P99 MS"), [
        (v.version, f"{v.weight}%", v.requests, v.errors, "-" if v.error_rate != v.error_rate else
         f"{v.error_rate:.2%}", _ms(v.p50_ms), _ms(v.p95_ms), _ms(v.p99_ms))
        for v in report.variants
    ])
    for c in report.comparisons:
        print(f"{c.variant} vs {c.against}, {c.metric.replace('_', ' ')} ({c.test}): {c.statement}")
    return 0


def _rate(value: float) -> str:
    return "-" if value != value else f"{value:.2%}"


async def shadow_report(client: Any, args: argparse.Namespace) -> int:
    report = await client.shadow_report(args.model, args.since_s)
    if args.json:
        emit_json(report)
        return 0
    print(f"model {report.model}, {when(report.window_start_ms)} to {when(report.window_end_ms)}, "
          f"shadow version {report.shadow_version or '- (none now)'}")
    if not report.versions:
        print("(no mirrored requests in this window)")
    for v in report.versions:
        print(f"version {v.version}: {v.compared} compared, {v.errors} failed, agreement {_rate(v.agreement)} "
              f"(95% {_rate(v.agreement_low)}–{_rate(v.agreement_high)})")
        if v.argmax_rows:
            print(f"  label flips: {v.argmax_flips} of {v.argmax_rows} rows ({_rate(v.flip_rate)}, "
                  f"at most {_rate(v.flip_rate_high)} at 95%)")
        diffs = ", ".join(f"≤{b.upper:g}: {b.count}" for b in v.max_abs_diff)
        print(f"  largest |difference| per request: {diffs or '-'}")
        print(f"  latency p50/p99: shadow {_ms(v.shadow_p50_ms)}/{_ms(v.shadow_p99_ms)} ms, "
              f"primary {_ms(v.primary_p50_ms)}/{_ms(v.primary_p99_ms)} ms")
        from google.protobuf.json_format import MessageToDict

        for sample in list(v.samples)[: max(0, args.samples)]:
            print(f"  disagreement: {json.dumps(MessageToDict(sample), sort_keys=True)[:300]}")
    return 0
