"""Importance sampling with the prior or a guide as proposal, all particles in one batched run."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Mapping, Optional

import torch
from pyro import poutine
from tqdm.auto import tqdm

from ppl.handlers import BatchMessenger, LogDensityMessenger, ProposeMessenger
from ppl.inference.program import Program
from ppl.inference.registry import register_engine
from ppl.inference.resampling import ZeroWeightError
from ppl.inference.result import Result, log_mean_exp_with_se
from ppl.inference.runtime import Seed, seeded


class NonFiniteWeightError(ValueError):
    """A log weight is NaN or +inf; the message names the site responsible."""


def _guide_run(program: Program, guide: Callable, n: int):
    """Run the guide batched over ``n`` particles, with the model's arguments."""
    density = LogDensityMessenger()
    tracer = poutine.trace(guide)
    with program.defaults(), density, BatchMessenger(n, program.max_plate_nesting, program.device):
        trace = tracer.get_trace(*program.args, **program.kwargs)
    return trace


def weigh(program: Program, n: int, guide: Optional[Callable] = None):
    """One batched chunk: the trace, per-particle log weights and the per-site log densities."""
    if guide is None:
        trace, density = program.run(n)
        # target / proposal: the prior's own draws, reweighted where poutine.scale / mask change it
        log_w = density.get("likelihood") + density.get("prior_excess")
    else:
        propose = ProposeMessenger(_guide_run(program, guide, n))
        trace, density = program.run(n, propose)
        propose.check_all_used()
        log_w = density.get("prior") + density.get("likelihood") - density.get("proposal")
    if not isinstance(log_w, torch.Tensor):
        log_w = torch.full((n,), float(log_w), device=program.device)
    return trace, log_w.detach(), density


def _check_weights(log_w: torch.Tensor, density: LogDensityMessenger) -> None:
    if torch.isnan(log_w).any() or (log_w == float("inf")).any():
        bad = [name for name, v in density.site_terms.items()
               if torch.isnan(v).any() or (v == float("inf")).any()]
        count = int((torch.isnan(log_w) | (log_w == float("inf"))).sum())
        raise NonFiniteWeightError(
            f"{count} log weight(s) are NaN or +inf; the site(s) responsible: {bad or ['(the proposal)']}"
        )


@register_engine("importance", "importance sampling from the prior or a guide")
def importance(
    model: Callable[..., Any],
    *args: Any,
    particles: int = 10_000,
    guide: Optional[Callable[..., Any]] = None,
    chunk_size: Optional[int] = None,
    seed: Seed = None,
    device: Optional[Any] = None,
    dtype: Optional[torch.dtype] = None,
    max_plate_nesting: Optional[int] = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
    progress: bool = False,
) -> Result:
    """Importance sampling: draw ``particles`` from the prior (or ``guide``) and weight them by p / q.

    Returns weighted particles, log Z = log mean(w) with its delta-method standard error, and
    the ESS. ``chunk_size`` bounds memory for very many particles (they are then drawn in
    batches of that size); time and memory grow linearly in ``particles``.
    """
    if int(particles) < 1:
        raise ValueError(f"particles must be a positive integer, got {particles!r}")
    start = time.perf_counter()
    program = Program(model, args, model_kwargs, max_plate_nesting=max_plate_nesting, device=device, dtype=dtype)
    program.require_full_data("importance sampling")
    chunk = int(chunk_size or particles)
    sizes = [min(chunk, particles - i) for i in range(0, particles, chunk)]
    samples: Dict[str, list] = {}
    loglik: Dict[str, list] = {}
    weights = []
    with seeded(seed, program.device), torch.no_grad():
        program.sites  # analyse before the timed loop (and fail early on a model with no latents)
        for n in tqdm(sizes, desc="importance", disable=not progress or len(sizes) == 1):
            trace, log_w, density = weigh(program, n, guide)
            _check_weights(log_w, density)
            weights.append(log_w)
            for k, v in program.named_values(trace).items():
                samples.setdefault(k, []).append(v)
            for k, v in program.pointwise_log_likelihood(trace).items():
                loglik.setdefault(k, []).append(v)
    log_w = torch.cat(weights)
    if not torch.isfinite(log_w).any():
        raise ZeroWeightError(
            f"all {particles} particles have zero weight (every log weight is -inf): the data are "
            "impossible under every proposed draw; check the observations' supports or use a guide"
        )
    log_z, se = log_mean_exp_with_se(log_w)
    sites = program.sites
    return Result(
        engine="importance",
        samples={k: torch.cat(v).unsqueeze(0) for k, v in samples.items()},
        log_weights=log_w.unsqueeze(0),
        log_evidence=log_z,
        log_evidence_se=se,
        log_likelihood={k: torch.cat(v).unsqueeze(0) for k, v in loglik.items()},
        observed_data=program.observed_data(),
        dims={k: s.dims for k, s in sites.items()},
        attrs={"particles": int(particles), "proposal": "guide" if guide else "prior",
               "runtime_s": time.perf_counter() - start, **program.attrs()},
    )
