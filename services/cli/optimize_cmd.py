"""``shunter optimize``: build, measure and judge optimised candidates of one model version.

Exit status: 0 when a candidate is worth registering (and, with ``--register``, it was);
2 for a problem with the command's input (eval file, labels, technique, source version),
nothing built or registered; 3 when no candidate is within the budget and faster or
smaller (the report is still written, nothing registered); 1 when the registry fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from services.cli import tls_args

DEFAULT_REGISTRY = "127.0.0.1:50051"
EXIT_INPUT = 2
EXIT_NO_WINNER = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "optimize", help="quantise, prune, distil and compile a model version; measure; register the winner",
        description=(__doc__ or "").replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--version", required=True, help="the version to optimise")
    p.add_argument("--eval", required=True, type=Path, metavar="FILE",
                   help="eval inputs: .npz (one array per input), .npy (single input) or .jsonl")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels", type=Path, metavar="FILE", help="labels: .npy or one per line")
    labels.add_argument("--label-column", metavar="NAME", help="the array / key in --eval holding the labels")
    p.add_argument("--try", dest="techniques", required=True, metavar="LIST",
                   help="comma-separated: quantize-dynamic, quantize-static[:calibrate=N], fp16, prune:A, "
                        "prune-structured:A[,finetune=E], "
                        "distill[:width=W,depth=D,epochs=N,T=T,alpha=A,lr=LR|arch=NAME], "
                        "compile:onnx|torchscript|torch_export|tensorrt")
    p.add_argument("--max-accuracy-drop", type=float, default=0.01, metavar="D",
                   help="accept candidates whose accuracy (or agreement) falls by at most D (default 0.01)")
    p.add_argument("--register", action="store_true", help="register the winner as a staged version")
    p.add_argument("--report", type=Path, metavar="DIR", help="write report.md, report.json and report.png here")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--repository", type=Path, metavar="DIR",
                   help="take the version from this model repository instead of the registry")
    p.add_argument("--registry", default=os.environ.get("SHUNTER_REGISTRY", DEFAULT_REGISTRY),
                   help=f"registry HOST:PORT (env SHUNTER_REGISTRY, default {DEFAULT_REGISTRY})")
    p.add_argument("--admin-key", default=os.environ.get("SHUNTER_ADMIN_KEY"),
                   help="admin API key (env SHUNTER_ADMIN_KEY)")
    tls_args.add_dial_args(p, "the registry")
    p.add_argument("--transfer", type=Path, metavar="FILE",
                   help="inputs (and --label-column labels) to distil and fine-tune on; default the eval set")
    p.add_argument("--trusted-dir", type=Path, metavar="DIR",
                   help="directory of student architectures for distill:arch=NAME (NAME.py defines student(config))")
    p.add_argument("--task", choices=("classify", "embed", "regress"), help="how to judge outputs (default: inferred)")
    p.add_argument("--workdir", type=Path, metavar="DIR",
                   help="where candidates are built (default REPORT/candidates, else a temporary directory); with "
                        "--register it must be where workers can read it, under the registry's --artifact-root")
    p.add_argument("--seconds-per-point", type=float, default=0.5, metavar="S",
                   help="timing budget per latency / batch-size measurement (default 0.5)")
    p.add_argument("--rounds", type=int, default=3, metavar="N",
                   help="timing rounds, round-robin over the candidates; the best of N is kept (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed for distillation and fine-tuning (default 0)")
    p.set_defaults(func=run)


def _fail(message: str, code: int) -> int:
    print(f"shunter optimize: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from services.common.errors import ShunterError
    from services.optimize.errors import OptimizeError

    try:
        return _run(args)
    except OptimizeError as exc:
        return _fail(f"{exc}; nothing registered", EXIT_INPUT)
    except ShunterError as exc:
        return _fail(f"registry {args.registry}: {exc} [{exc.code.name}]; nothing registered", 1)


def _client(args: argparse.Namespace) -> Any:
    from services.common.registry_client import RegistryClient
    from services.optimize.errors import OptimizeError

    if not args.admin_key:
        raise OptimizeError("no admin key for the registry: pass --admin-key or set SHUNTER_ADMIN_KEY")
    try:
        tls = tls_args.client_tls(args)
    except tls_args.FlagError as exc:
        raise OptimizeError(str(exc)) from None
    return RegistryClient(args.registry, args.admin_key, tls=tls)


def _load_original(args: argparse.Namespace) -> Any:
    from services.optimize import source

    if args.repository is not None:
        return source.from_repository(args.repository, args.model, args.version)

    async def fetch() -> Any:
        async with _client(args) as client:
            model = await client.get_model(args.model)
        for version in model.versions:
            if version.version == args.version:
                return version
        from services.optimize.errors import OptimizeError

        raise OptimizeError(f"model {args.model!r} has no version {args.version} in the registry")

    return source.from_registered(asyncio.run(fetch()), args.registry)


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from services.common.errors import ShunterError
    from services.optimize import evalset, plan, report, runner
    from services.optimize.errors import OptimizeError

    if args.max_accuracy_drop < 0:
        raise OptimizeError(f"--max-accuracy-drop must be >= 0, got {args.max_accuracy_drop}")
    if args.register and args.report is None and args.workdir is None:
        raise OptimizeError("--register keeps the winner's artifact: give --report DIR or --workdir DIR")
    if args.register and not args.admin_key:
        raise OptimizeError("--register needs an admin key: pass --admin-key or set SHUNTER_ADMIN_KEY")
    original = _load_original(args)
    if original.config.max_batch_size == 0:
        raise OptimizeError(f"{args.model} version {args.version} takes no batch dimension; optimize needs rows")
    techniques = plan.parse_try(args.techniques, original.config.backend)
    evals = evalset.load_evalset(args.eval, original.config, args.labels, args.label_column)
    transfer = None
    if args.transfer is not None:
        transfer = evalset.load_evalset(args.transfer, original.config, None, args.label_column)
    scratch = args.workdir is None and args.report is None
    workdir = args.workdir or (args.report / "candidates" if args.report else Path(tempfile.mkdtemp("-optimize")))

    err = Console(stderr=True)
    try:
        with _Bar(err) as bar:
            outcome = runner.run(original, evals, techniques, workdir, args.max_accuracy_drop, args.task, transfer,
                                 args.seconds_per_point, args.seed, bar, max(args.rounds, 1), args.trusted_dir)
    finally:
        if scratch:  # nothing asked to keep the candidates
            shutil.rmtree(workdir, ignore_errors=True)
    code = 0 if outcome.winner else EXIT_NO_WINNER
    registered = None
    failure: ShunterError | None = None
    if args.register and outcome.winner:
        try:
            registered = asyncio.run(_register(args, outcome))
        except ShunterError as exc:  # the report is still written, saying nothing was registered
            outcome.registered_version, failure = None, exc
    if args.report is not None:
        written = report.write(outcome, args.report)
        err.print(f"report: {', '.join(str(p) for p in written)}")
    if args.json:
        print(json.dumps(report.as_json(outcome), indent=2, default=str))
    else:
        report.print_table(outcome, Console(width=200))
    if registered is not None:
        err.print(f"registered {registered.model} version {registered.version} ({registered.backend}, staged) "
                  f"sha256 {registered.sha256}")
    if args.register and not outcome.winner:
        err.print("nothing registered: no candidate is within the budget and faster or smaller")
    if failure is not None:
        raise failure
    return code


async def _register(args: argparse.Namespace, outcome: Any) -> Any:
    from services.optimize import register, report

    async with _client(args) as client:
        number = await register.next_version(client, outcome.original.model)
        outcome.registered_version = number
        winner = outcome.result(outcome.winner)
        return await register.register_candidate(client, outcome.original.model, number, winner.directory,
                                                 report.stored_text(outcome))


class _Bar:
    """A rich progress bar on stderr: one step per candidate, epochs shown while training."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console, transient=True)
        self._task: Any = None
        self._detail: Any = None
        self._steps = 0

    def __enter__(self) -> _Bar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, total: int) -> None:
        self._task = self._progress.add_task("optimize", total=total)

    def step(self, what: str) -> None:
        if self._steps:
            self._progress.advance(self._task)
        self._steps += 1
        self._progress.update(self._task, description=what)
        if self._detail is not None:
            self._progress.remove_task(self._detail)
            self._detail = None

    def detail(self, done: int, total: int, what: str) -> None:
        if self._detail is None:
            self._detail = self._progress.add_task(f"  {what} epochs", total=total)
        self._progress.update(self._detail, completed=done)
