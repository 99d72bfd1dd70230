"""Inference engines: each a composable pass over a program, returning a common Result."""
from ppl.inference.importance import importance
from ppl.inference.program import ModelError, Program
from ppl.inference.registry import get_engine, list_engines, register_engine
from ppl.inference.result import Result
from ppl.inference.target import Density, UnconstrainedTarget

# engine families register themselves on import
from ppl.inference import gfn, mcmc, smc, vi  # noqa: E402,F401

__all__ = [
    "importance",
    "Program", "ModelError", "Result", "UnconstrainedTarget", "Density",
    "register_engine", "get_engine", "list_engines",
]
