"""Engines register themselves by name, so the CLI (and users) find every engine in one place."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

# Options the CLI knows how to pass; an engine receives those its signature accepts.
CLI_OPTIONS = ("particles", "chains", "draws", "warmup", "device", "seed", "dtype")


@dataclass(frozen=True)
class EngineSpec:
    """A registered engine: ``fn(model, *args, model_kwargs=..., **options) -> Result``."""

    name: str
    fn: Callable[..., Any]
    description: str
    options: Tuple[str, ...]
    open_options: bool = False  # the engine also takes **options (passed on to a kernel, say)

    def accepts(self, option: str) -> bool:
        return option in self.options

    def accepts_extra(self, option: str) -> bool:
        """Whether ``option`` may be passed by name (declared, or swallowed by ``**options``)."""
        return self.accepts(option) or self.open_options


_ENGINES: Dict[str, EngineSpec] = {}


def register_engine(name: str, description: str = "") -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as engine ``name`` (its keyword options are read from its signature)."""

    def wrap(fn: Callable) -> Callable:
        params = inspect.signature(fn).parameters
        options = tuple(p for p in params if params[p].kind in (params[p].KEYWORD_ONLY, params[p].POSITIONAL_OR_KEYWORD) and p != "model")
        doc = description or (inspect.getdoc(fn) or "").split("\n")[0]
        open_options = any(p.kind == p.VAR_KEYWORD for p in params.values())
        _ENGINES[name] = EngineSpec(name, fn, doc, options, open_options)
        return fn

    return wrap


def get_engine(name: str) -> EngineSpec:
    """The engine called ``name``; a KeyError lists the registered ones."""
    _load_builtin_engines()
    try:
        return _ENGINES[name]
    except KeyError:
        raise KeyError(f"unknown engine {name!r}; registered engines: {', '.join(sorted(_ENGINES))}") from None


def list_engines() -> Dict[str, EngineSpec]:
    _load_builtin_engines()
    return dict(sorted(_ENGINES.items()))


def _load_builtin_engines() -> None:
    import ppl.inference  # noqa: F401  (importing the package registers its engines)
