"""Command line: ``python -m ppl models | engines | run MODEL --engine ENGINE --out DIR``.

``run`` takes a registered model name or ``path/to/file.py:function`` with ``--data file.json``
(keys become keyword arguments; lists become tensors), runs the engine and writes
``result.json`` (engine, model, runtime, log evidence, per-element summary), ``idata.nc`` and
ArviZ diagnostic plots into ``--out``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch

from ppl.errors import PPLError


class CLIError(Exception):
    """A user error the CLI reports in one line (exit status 2)."""


# --------------------------------------------------------------------------------- data / model
def _to_tensor(value: Any) -> Any:
    """JSON values to model arguments: numeric lists become float tensors, scalars stay numbers."""
    if isinstance(value, list):
        try:
            return torch.tensor(value, dtype=torch.get_default_dtype())
        except (TypeError, ValueError) as e:
            raise CLIError(f"a list in the data file is not numeric or not rectangular: {e}") from e
    if isinstance(value, dict):
        return {k: _to_tensor(v) for k, v in value.items()}
    return value


def load_data(path: Optional[str]) -> Dict[str, Any]:
    """The keyword arguments stored in a JSON data file."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--data: no such file {path!r}")
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CLIError(f"--data: {path!r} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from e
    if not isinstance(raw, dict):
        raise CLIError(f"--data: {path!r} must hold a JSON object (argument name -> value), got {type(raw).__name__}")
    return {k: _to_tensor(v) for k, v in raw.items()}


def load_model(spec: str, data_path: Optional[str]) -> Tuple[str, Callable, Dict[str, Any], Any]:
    """(name, model, keyword data, ground-truth callable or None) for a registry name or file:function."""
    from ppl.models import get_model, list_models

    file, sep, func = spec.rpartition(":")
    if sep and file.endswith(".py"):
        path = Path(file)
        if not path.is_file():
            raise CLIError(f"model file {file!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as e:  # the user's file: report any failure in one line
            raise CLIError(f"could not import {file!r}: {type(e).__name__}: {e}") from e
        if not callable(getattr(module, func, None)):
            raise CLIError(f"{file!r} has no function {func!r}")
        return func, getattr(module, func), load_data(data_path), None
    try:
        model_spec = get_model(spec)
    except KeyError:
        raise CLIError(
            f"unknown model {spec!r}: use a registered name ({', '.join(list_models())}) "
            "or path/to/file.py:function"
        ) from None
    data = model_spec.data()
    data.update(load_data(data_path))
    return spec, model_spec.model, data, model_spec.ground_truth


# --------------------------------------------------------------------------------- commands
def cmd_models(args: argparse.Namespace) -> int:
    from ppl.models import list_models

    for name, spec in list_models().items():
        print(f"{name:34s} {spec.description}")
    return 0


def cmd_engines(args: argparse.Namespace) -> int:
    from ppl.inference import list_engines

    for name, spec in list_engines().items():
        print(f"{name:16s} {spec.description}")
    return 0


def _engine_options(spec, args: argparse.Namespace) -> Dict[str, Any]:
    chosen = {k: getattr(args, k) for k in ("particles", "chains", "draws", "warmup", "device", "seed")}
    opts = {k: v for k, v in chosen.items() if v is not None and spec.accepts(k)}
    ignored = [f"--{k}" for k, v in chosen.items() if v is not None and not spec.accepts(k) and k != "seed"]
    if ignored:
        print(f"note: engine {spec.name!r} takes no {', '.join(ignored)}; ignored", file=sys.stderr)
    if spec.accepts("progress") or spec.open_options:
        opts["progress"] = not args.quiet
    opts.update(_extra_options(spec, args.option))
    return opts


def _extra_options(spec, pairs: Sequence[str]) -> Dict[str, Any]:
    """``--option key=value`` pairs: values are read as JSON when they parse (numbers, lists...)."""
    out: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise CLIError(f"--option expects KEY=VALUE, got {pair!r}")
        if key == "model_kwargs" or not spec.accepts_extra(key):
            raise CLIError(
                f"engine {spec.name!r} has no option {key!r}; its options: "
                + ", ".join(o for o in spec.options if o != "model_kwargs")
            )
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from ppl.diagnostics.arviz import write_netcdf
    from ppl.diagnostics.plots import save_plots
    from ppl.diagnostics.summary import summarize
    from ppl.inference import get_engine
    from ppl.inference.result import dumps

    try:
        engine = get_engine(args.engine)
    except KeyError as e:
        raise CLIError(str(e.args[0])) from None
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: CUDA is not available on this machine")
    name, model, data, ground_truth = load_model(args.model, args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    result = engine.fn(model, model_kwargs=data, **_engine_options(engine, args))
    runtime = time.perf_counter() - start

    report: Dict[str, Any] = {"engine": args.engine, "model": name, "runtime_s": runtime}
    report.update({k: v for k, v in result.scalar_attrs().items() if k not in report})
    report.setdefault("log_evidence", None)
    if ground_truth is not None:
        truth = ground_truth(data)
        if truth.log_evidence is not None:
            report["ground_truth_log_evidence"] = truth.log_evidence
    report["summary"] = summarize(result)
    num_draws = None
    if result.weighted:
        num_draws = min(result.num_draws, args.draws or 4000)
    idata = result.to_arviz(num_draws=num_draws, seed=args.seed or 0)
    write_netcdf(idata, out / "idata.nc")
    plots = [] if args.no_plots else save_plots(idata, out, result.diagnostics)
    report["plots"] = [p.name for p in plots]
    (out / "result.json").write_text(dumps(report))
    if not args.quiet:
        le = report.get("log_evidence")
        if le is not None:
            se = report.get("log_evidence_se")
            print(f"log evidence: {le:.6f}" + (f" ± {se:.6f}" if se is not None else ""))
        print(f"{args.engine} on {name}: {runtime:.2f} s; wrote {out / 'result.json'}, {out / 'idata.nc'} and {len(plots)} plot(s)")
    return 0


# --------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ppl", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the registered models").set_defaults(func=cmd_models)
    sub.add_parser("engines", help="list the registered engines").set_defaults(func=cmd_engines)
    run = sub.add_parser("run", help="run an engine on a model and write results")
    run.add_argument("model", help="a registered model name or path/to/file.py:function")
    run.add_argument("--engine", required=True, help="engine name (see `python -m ppl engines`)")
    run.add_argument("--data", help="JSON file of keyword arguments for the model")
    run.add_argument("--particles", type=int, help="particles (importance sampling, SMC, VI draws)")
    run.add_argument("--chains", type=int, help="MCMC chains, run as one batch")
    run.add_argument("--draws", type=int, help="draws per chain (or posterior draws kept)")
    run.add_argument("--warmup", type=int, help="MCMC warmup iterations")
    run.add_argument("--device", choices=["cpu", "cuda"], help="run on this device")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--out", required=True, help="output directory")
    run.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                     help="an engine-specific option, repeatable (e.g. -o objective=iwae -o steps=500); "
                          "values are parsed as JSON when they can be")
    run.add_argument("--no-plots", action="store_true", help="skip the PNG diagnostic plots")
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")  # its refactor notice
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, PPLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
