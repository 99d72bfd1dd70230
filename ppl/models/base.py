"""The model registry's record types: a model, its data and its exact answer, by name."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch


@dataclass
class GroundTruth:
    """What is known exactly (or from a long reference run) about a model's posterior.

    ``posterior_mean`` / ``posterior_sd`` map site names to tensors of the site's shape (one
    particle's shape, no batch dimension). ``log_evidence`` is log p(data) where it is known.
    ``exact`` says whether the numbers are exact (conjugacy, Kalman filter, enumeration) or come
    from a reference run; ``extra`` holds model-specific truths (e.g. Kalman filtering means).
    """

    posterior_mean: Dict[str, torch.Tensor] = field(default_factory=dict)
    posterior_sd: Dict[str, torch.Tensor] = field(default_factory=dict)
    log_evidence: Optional[float] = None
    exact: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: ``model(**data())`` is a runnable Pyro program.

    ``data(seed=0, **options)`` returns the keyword arguments of the model (tensors), seeded so a
    name always means the same data set. ``ground_truth(data)`` returns a :class:`GroundTruth`
    for those data, or is ``None`` when nothing exact is known.
    """

    name: str
    model: Callable[..., Any]
    data: Callable[..., Dict[str, Any]]
    description: str
    ground_truth: Optional[Callable[[Dict[str, Any]], GroundTruth]] = None
    tags: tuple = ()


_REGISTRY: Dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry (a name may be registered once)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"model name {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_model(name: str) -> ModelSpec:
    """The registered model called ``name``; a KeyError lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise KeyError(f"unknown model {name!r}; registered models: {known}") from None


def list_models() -> Dict[str, ModelSpec]:
    """All registered models, by name."""
    return dict(sorted(_REGISTRY.items()))
