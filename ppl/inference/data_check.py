"""Observed values outside their distribution's support are refused before any particle runs.

Engines run with Pyro's validation off (a proposal outside some particle's support is a zero weight,
not an error), so an impossible observation would otherwise give a finite but meaningless log
density. Only supports fixed by the distribution's type are checked here (positive, unit interval,
boolean, simplex, ...): a support whose bounds are tensors may depend on latent values
(``Uniform(x - 1, x + 1)``), and then an observation outside one draw's support is a zero weight.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.distributions import constraints

from ppl.errors import ModelError
from ppl.handlers._sites import is_deterministic, is_sample
from ppl.handlers.improper import ImproperInitMessenger

if TYPE_CHECKING:  # pragma: no cover
    from ppl.inference.program import Program


def check_observations(program: "Program") -> None:
    """Raise :class:`ModelError` naming the site and index of the first observation off its support."""
    trace = program.trace_unbatched(ImproperInitMessenger())
    for name, site in trace.nodes.items():
        if not is_sample(site) or not site["is_observed"] or is_deterministic(site):
            continue
        if site["infer"].get("is_auxiliary", False):  # pyro.factor: no support to check
            continue
        support = site["fn"].support
        if not _static(support):
            continue
        value = site["value"]
        mask = site["mask"]
        if mask is False:
            continue
        ok = torch.as_tensor(support.check(value))
        if isinstance(mask, torch.Tensor):  # masked-out observations may hold anything
            ok = ok | ~mask
        if not bool(ok.all()):
            bad = (~ok).nonzero()
            index = tuple(int(i) for i in bad[0]) if bad.numel() else ()
            where = f" at index {index}" if index else ""
            shown = value[index] if index and value.dim() >= len(index) else value
            raise ModelError(
                f"observed site {name!r}: the value{where} ({_short(shown)}) is outside the support {support} "
                f"of {type(site['fn']).__name__} ({int(bad.shape[0])} value(s) in all); check the data"
            )


def _static(support) -> bool:
    """Whether a support is fixed by its type (no tensor bounds that may depend on latents)."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return not any(isinstance(v, torch.Tensor) for v in vars(support).values())


def _short(value: torch.Tensor) -> str:
    value = value.detach().reshape(-1)
    text = ", ".join(f"{float(v):.4g}" for v in value[:4])
    return text + (", ..." if value.numel() > 4 else "")
