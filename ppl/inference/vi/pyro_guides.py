"""Objectives for user-written Pyro guide programs, discrete latents included.

The guide runs batched over K particles, the model replays its latent sites through
:class:`~ppl.handlers.ProposeMessenger` (a guide missing a model latent, or proposing a site
the model lacks, raises ``GuideMismatchError``), and the per-particle log p and log q come back
as (K,) tensors, or as (K, B) over a data plate when every latent is local to that plate.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.trace_struct import Trace

from ppl.handlers import BatchMessenger, LogDensityMessenger, ProposeMessenger
from ppl.handlers._sites import PARTICLE_PLATE, is_latent, is_observation
from ppl.handlers.improper import ImproperInitMessenger
from ppl.inference.program import ModelError, Program


def run_guide(program: Program, guide: Callable, n: int) -> Trace:
    """The guide's trace, batched over ``n`` particles, called with the model's arguments."""
    with program.defaults(), BatchMessenger(n, program.max_plate_nesting, program.device):
        return poutine.trace(guide).get_trace(*program.args, **program.kwargs)


class GuideSupportError(ValueError):
    """A guide proposed a value outside the support of the model's site."""


def check_support(program: Program, guide_trace: Trace) -> None:
    """Raise :class:`GuideSupportError` naming each guide site whose values leave the model site's support."""
    sites = program.latent_sites()
    for name, site in guide_trace.nodes.items():
        if not is_latent(site) or name not in sites:
            continue
        support = sites[name].support
        if not bool(support.check(site["value"]).all()):
            raise GuideSupportError(
                f"the guide's site {name!r} (support {site['fn'].support}) proposed values outside the model's "
                f"support {support}; use a guide distribution on the same support (e.g. LogNormal for a positive site)"
            )


def guided_traces(program: Program, guide: Callable, n: int) -> Tuple[Trace, Trace, LogDensityMessenger]:
    """Guide trace, model trace with the guide's latents, and the model's log-density accounting."""
    guide_trace = run_guide(program, guide, n)
    check_support(program, guide_trace)
    propose = ProposeMessenger(guide_trace, strict=True)
    trace, density = program.run(n, propose)
    propose.check_all_used()
    return guide_trace, trace, density


def _site_terms(trace: Trace, n: int, plate: Optional[str], which: Callable) -> torch.Tensor:
    total = None
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or not which(site):
            continue
        lp = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
        lp = scale_and_mask(lp, site["scale"], site["mask"])
        frames = {f.name: f for f in site["cond_indep_stack"]}
        pdim = frames[PARTICLE_PLATE].dim if PARTICLE_PLATE in frames else None
        if pdim is None:
            raise ModelError(f"site {name!r} was not batched over particles")
        while lp.dim() < -pdim:
            lp = lp.unsqueeze(0)
        shape = list(lp.shape)
        shape[lp.dim() + pdim] = n
        lp = lp.expand(shape)
        lp = lp.movedim(lp.dim() + pdim, 0)
        if plate is None:
            term = lp.reshape(n, -1).sum(1)
        else:
            if plate not in frames:
                raise ModelError(
                    f"site {name!r} is outside plate {plate!r}: per-data-point objectives need every latent "
                    "and observed site inside that plate (or use plate=None for whole-data particles)"
                )
            f = frames[plate]
            axis = lp.dim() + f.dim  # particle axis moved to 0; plate dims are counted from the right
            lp = lp.movedim(axis, 1)
            term = lp.reshape(n, lp.shape[1], -1).sum(2)
        total = term if total is None else total + term
    if total is None:
        raise ModelError("no site contributed a log density")
    return total


def pyro_guide_log_weights(program: Program, guide: Callable, n: int, plate: Optional[str] = None
                           ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(log p, log q) for ``n`` particles drawn from the Pyro ``guide``: (n,) or (n, B) over ``plate``.

    log p includes model parameters (``pyro.param``) with their gradients; log q includes the
    guide's. Non-reparameterisable guide sites (discrete) are returned detached from their
    samples, so use the score-function, RWS or VIMCO objectives for them.
    """
    guide_trace, trace, density = guided_traces(program, guide, n)
    if plate is None:
        log_p = density.get("prior") + density.get("likelihood")
        log_q = density.get("proposal")
        zero = torch.zeros(n, device=program.device)
        return log_p + zero, log_q + zero
    log_p = _site_terms(trace, n, plate, lambda s: is_latent(s) or is_observation(s))
    log_q = _site_terms(guide_trace, n, plate, is_latent)
    return log_p, log_q


def trace_params(program: Program, guide: Optional[Callable] = None, n: int = 1) -> Dict[str, List[torch.Tensor]]:
    """The unconstrained ``pyro.param`` / ``pyro.module`` tensors used by the model and by the guide."""
    out: Dict[str, List[torch.Tensor]] = {"model": [], "guide": []}
    with poutine.trace(param_only=True) as tr:  # flat-prior sites get Stan's init instead of failing to sample
        program.run(n, ImproperInitMessenger()) if guide is None else guided_traces(program, guide, n)
    guide_names = set()
    if guide is not None:
        with poutine.trace(param_only=True) as gtr:
            run_guide(program, guide, n)
        guide_names = set(gtr.trace.nodes)
    for name, site in tr.trace.nodes.items():
        p = site["value"].unconstrained()
        out["guide" if name in guide_names else "model"].append(p)
    return out
