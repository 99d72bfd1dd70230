"""The ``gfn`` engine: train a GFlowNet policy over a Pyro program's latent sites, return weighted samples.

The program's log joint is the log reward; trajectories are whole program runs (a tree, P_B = 1),
trained with TB, VarGrad, DB, SubTB or forward-looking DB (:mod:`ppl.inference.gfn.program_train`),
with optional exploration, replay and local search. The returned particles are draws from the
trained policy weighted by log R - log P_F, a valid importance result with an unbiased evidence
estimate.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Optional

import torch

from ppl.inference.gfn.program import run_policy
from ppl.inference.gfn.program_smc import TWISTS, program_policy_smc, smc_result
from ppl.inference.gfn.program_train import train_program_policy
from ppl.inference.program import Program
from ppl.inference.registry import register_engine
from ppl.inference.result import Result, log_mean_exp_with_se
from ppl.inference.runtime import Seed, seeded


@register_engine("gfn", "GFlowNet policy (TB, DB, SubTB, ...) over the program's latent sites, as an importance proposal")
def gfn(
    model: Callable[..., Any],
    *args: Any,
    steps: int = 500,
    particles: int = 256,
    samples: Optional[int] = None,
    loss: str = "tb",
    lr: float = 1e-3,
    lr_log_z: float = 0.1,
    beta: float = 1.0,
    hidden: int = 128,
    epsilon: float = 0.0,
    temperature: float = 1.0,
    lamda: float = 0.9,
    replay: int = 0,
    local_search_every: int = 0,
    local_search_back: int = 1,
    sampler: str = "importance",
    twist: Optional[str] = None,
    ess_threshold: float = 0.5,
    seed: Seed = None,
    device: Optional[Any] = None,
    dtype: Optional[torch.dtype] = None,
    max_plate_nesting: Optional[int] = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
    progress: bool = False,
) -> Result:
    """Train a GFlowNet over the program's latent sites (``steps`` iterations of ``particles`` trajectories).

    ``loss``: tb, vargrad, db, subtb (``lamda``) or fldb; ``epsilon`` / ``temperature`` explore;
    ``replay=k`` adds k reward-prioritised objects from earlier batches to each batch;
    ``local_search_every=m`` refines every m-th batch by redrawing its last ``local_search_back``
    sites with a Metropolis-Hastings test (see :func:`~ppl.inference.gfn.program_train.train_program_policy`).
    ``sampler="smc"`` returns SMC with the trained policy as proposal, one step per latent site
    (:func:`~ppl.inference.gfn.program_smc.program_policy_smc`; ``twist`` default: the learned flow
    for db / subtb, flow plus accrued log joint for fldb, the accrued log joint otherwise).
    Discrete sites get a categorical policy over their enumerated support (masked where the prior
    is zero); continuous sites a Gaussian in unconstrained space (the log-Jacobian enters the
    reward). ``beta`` tempers the likelihood during training. Returns ``samples`` (default
    ``particles``) draws weighted by log p(x, y) - log P_F(x), log Z with its standard error, and
    the learned log Z in ``attrs["log_z_learned"]``.
    """
    if int(steps) < 0 or int(particles) < 1:
        raise ValueError(f"steps must be >= 0 and particles >= 1, got steps={steps!r}, particles={particles!r}")
    if sampler not in ("importance", "smc"):
        raise ValueError(f"sampler must be 'importance' or 'smc', got {sampler!r}")
    if twist is not None and twist not in TWISTS:
        raise ValueError(f"twist must be one of {TWISTS} (or None: chosen by the loss), got {twist!r}")
    start = time.perf_counter()
    program = Program(model, args, model_kwargs, max_plate_nesting=max_plate_nesting, device=device, dtype=dtype)
    with seeded(seed, program.device):
        program.sites
        policy, hist = train_program_policy(program, int(steps), int(particles), loss, lr, lr_log_z, beta, hidden,
                                            epsilon, temperature, progress, lamda=lamda, replay=int(replay),
                                            local_search_every=int(local_search_every),
                                            local_search_back=int(local_search_back))
        n = int(samples or particles)
        attrs = {"log_z_learned": hist["log_z"][-1] if hist["log_z"] else float("nan"), "steps": int(steps),
                 "particles": int(particles), "loss": loss, "beta": float(beta), **program.attrs()}
        if sampler == "smc":
            tw = twist or {"db": "flow", "subtb": "flow", "fldb": "forward_looking"}.get(loss, "partial")
            out, fk = program_policy_smc(program, policy, n, twist=tw, ess_threshold=ess_threshold)
            return smc_result(program, out, fk, start, {**attrs, "sampler": "smc", "twist": tw}, hist)
        with torch.no_grad():
            trace, log_pf, log_r, density, _ = run_policy(program, policy, n, 1.0)
            log_w = (log_r - log_pf).detach()
            if torch.isnan(log_w).any() or (log_w == float("inf")).any():
                raise ValueError("a log weight is NaN or +inf; site terms: "
                                 f"{[k for k, v in density.site_terms.items() if not bool(torch.isfinite(v).all())]}")
            named = program.named_values(trace)
            loglik = program.pointwise_log_likelihood(trace)
    log_z, se = log_mean_exp_with_se(log_w)
    w = torch.softmax(log_w.double(), 0)
    return Result(
        engine="gfn",
        samples={k: v.unsqueeze(0) for k, v in named.items()},
        log_weights=log_w.unsqueeze(0),
        log_evidence=log_z,
        log_evidence_se=se,
        log_likelihood={k: v.unsqueeze(0) for k, v in loglik.items()},
        observed_data=program.observed_data(),
        dims={k: s.dims for k, s in program.sites.items()},
        diagnostics={k: torch.tensor(v) for k, v in hist.items()},
        attrs={**attrs, "sampler": "importance", "elbo": float(log_w.mean()), "ess": float(1.0 / (w ** 2).sum()),
               "runtime_s": time.perf_counter() - start},
    )
