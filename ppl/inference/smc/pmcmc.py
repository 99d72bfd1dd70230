"""Particle MCMC for static parameters of state-space models: PMMH and particle Gibbs (CSMC + ancestor sampling).

Chains are independent particle systems of one batched run: with C chains and N particles the
model sees C * N particles, and ``make_fk(theta)`` receives each particle's parameter row
(``theta`` of shape (C * N, P), chain c owning rows c*N .. (c+1)*N - 1). No loop over chains.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Union

import torch

from ppl.inference.resampling import resample
from ppl.inference.runtime import Seed, seeded
from ppl.inference.smc.feynman_kac import FKModel, run_smc


def _theta(theta0: torch.Tensor, chains: int) -> torch.Tensor:
    theta = torch.as_tensor(theta0)
    if theta.dim() == 1:
        theta = theta.expand(chains, theta.shape[0]).clone()
    if theta.dim() != 2 or theta.shape[0] != chains:
        raise ValueError(f"theta0 must have shape (P,) or (chains, P) = ({chains}, P), got {tuple(theta.shape)}")
    return theta


def pmmh(
    make_fk: Callable[[torch.Tensor], FKModel],
    log_prior: Callable[[torch.Tensor], torch.Tensor],
    theta0: torch.Tensor,
    *,
    particles: int = 100,
    chains: int = 4,
    iterations: int = 1000,
    scale: Union[float, torch.Tensor] = 0.1,
    adapt: bool = True,
    seed: Seed = None,
) -> Dict[str, torch.Tensor]:
    """Particle marginal Metropolis–Hastings with a Gaussian random walk on theta (C chains batched).

    ``log_prior(theta (C, P)) -> (C,)``. The likelihood of each proposal is a particle filter's
    log Z (unbiased in evidence scale, so the chain targets the exact posterior). During the
    first half the random-walk scale adapts toward acceptance 0.234. Returns ``theta``
    (C, iterations, P), ``log_likelihood`` (C, iterations) and ``acceptance`` (C,).
    """
    N, C = int(particles), int(chains)
    theta = _theta(theta0, C)
    step = torch.as_tensor(scale, dtype=theta.dtype, device=theta.device).expand(theta.shape[1]).clone()
    with seeded(seed, theta.device), torch.no_grad():
        def loglik(th):
            return run_smc(make_fk(th.repeat_interleave(N, 0)), N, systems=C, keep_history=False).log_evidence

        lp = log_prior(theta)
        if not bool(torch.isfinite(lp).all()):
            raise ValueError("theta0 has zero prior density for some chain")
        ll = loglik(theta)
        draws, lls = [], []
        accepted = torch.zeros(C, dtype=torch.float64, device=theta.device)
        window = torch.zeros(C, dtype=torch.float64, device=theta.device)
        for it in range(int(iterations)):
            prop = theta + step * torch.randn_like(theta)
            lp_prop = log_prior(prop)
            ok = torch.isfinite(lp_prop)
            safe = torch.where(ok[:, None], prop, theta)  # never run the filter outside the prior's support
            ll_prop = loglik(safe)
            log_a = torch.where(ok, lp_prop + ll_prop - lp - ll, torch.full_like(ll, -math.inf))
            acc = torch.log(torch.rand_like(log_a)) < torch.nan_to_num(log_a, nan=-math.inf)
            theta = torch.where(acc[:, None], prop, theta)
            lp = torch.where(acc, lp_prop, lp)
            ll = torch.where(acc, ll_prop, ll)
            accepted += acc.double()
            window += acc.double()
            if adapt and it < iterations // 2 and (it + 1) % 20 == 0:
                step = step * math.exp(float(window.mean()) / 20 - 0.234)
                window.zero_()
            draws.append(theta.clone())
            lls.append(ll.clone())
    return {"theta": torch.stack(draws, 1), "log_likelihood": torch.stack(lls, 1),
            "acceptance": accepted / max(int(iterations), 1), "scale": step}


def conditional_smc(
    fk: FKModel,
    particles: int,
    reference: Optional[List[Dict[str, torch.Tensor]]] = None,
    *,
    systems: int = 1,
    ancestor_sampling: bool = True,
) -> List[Dict[str, torch.Tensor]]:
    """One conditional SMC sweep (multinomial resampling every step) for each of ``systems`` systems.

    ``reference`` is a list over time of state dicts with one row per system ((S, ...) each);
    it is kept in the last slot of each system, its ancestor redrawn by ancestor sampling (needs
    ``fk.log_m``). Returns a trajectory drawn from the final weights, in the same format.
    Without a reference this is a plain bootstrap SMC sweep.
    """
    if not isinstance(fk, FKModel):
        raise TypeError("conditional SMC needs an FKModel (separate M0, M, logG and log_m callables)")
    if ancestor_sampling and reference is not None and fk.log_m is None:
        raise ValueError("ancestor sampling needs the transition density log_m of the FKModel")
    N, S, T = int(particles), int(systems), fk.num_steps
    n = N * S
    ref_idx = None
    base = None

    def put(state, t):
        if reference is None:
            return state
        return {k: v.index_copy(0, ref_idx, reference[t][k].to(v.dtype)) for k, v in state.items()}

    x = fk.M0(n)
    dev = next(iter(x.values())).device
    base = (torch.arange(S, device=dev) * N)[:, None]
    ref_idx = torch.arange(S, device=dev) * N + (N - 1)
    x = put(x, 0)
    lw = fk.logG(0, None, x).reshape(S, N)
    states, ancs = [x], [None]
    for t in range(1, T):
        local = resample(lw, "multinomial")
        if reference is not None:
            if ancestor_sampling:
                ref_rep = {k: v.repeat_interleave(N, 0) for k, v in reference[t].items()}
                lm = fk.log_m(t, x, ref_rep).reshape(S, N)
                a_ref = torch.multinomial(torch.softmax((lw + lm).double(), -1), 1).squeeze(-1)
            else:
                a_ref = torch.full((S,), N - 1, device=dev, dtype=torch.long)
            local[:, N - 1] = a_ref
        anc = (local + base).reshape(-1)
        xp = {k: v.index_select(0, anc) for k, v in x.items()}
        x = put(fk.M(t, xp), t)
        lw = fk.logG(t, xp, x).reshape(S, N)
        states.append(x)
        ancs.append(anc)
    k = torch.multinomial(torch.softmax(lw.double(), -1), 1).squeeze(-1) + base.squeeze(-1)
    path: List[Dict[str, torch.Tensor]] = [dict() for _ in range(T)]
    for t in range(T - 1, -1, -1):
        path[t] = {key: v.index_select(0, k) for key, v in states[t].items()}
        if t > 0:
            k = ancs[t].index_select(0, k)
    return path


def particle_gibbs(
    make_fk: Callable[[torch.Tensor], FKModel],
    sample_theta: Callable[[Dict[str, torch.Tensor], torch.Tensor], torch.Tensor],
    theta0: torch.Tensor,
    *,
    particles: int = 50,
    chains: int = 4,
    iterations: int = 500,
    ancestor_sampling: bool = True,
    seed: Seed = None,
) -> Dict[str, torch.Tensor]:
    """Particle Gibbs: alternate a CSMC (ancestor sampling) draw of the path and ``sample_theta(path, theta)``.

    ``sample_theta`` receives the path as name -> (C, T, ...) and the current theta (C, P) and
    returns a draw from p(theta | path, y), shape (C, P). Returns ``theta`` (C, iterations, P)
    and the last path.
    """
    N, C = int(particles), int(chains)
    theta = _theta(theta0, C)
    draws = []
    ref = None
    with seeded(seed, theta.device), torch.no_grad():
        for _ in range(int(iterations)):
            ref = conditional_smc(make_fk(theta.repeat_interleave(N, 0)), N, ref, systems=C,
                                  ancestor_sampling=ancestor_sampling)
            path = {k: torch.stack([r[k] for r in ref], 1) for k in ref[0]}
            theta = sample_theta(path, theta)
            if theta.shape[0] != C:
                raise ValueError(f"sample_theta must return shape ({C}, P), got {tuple(theta.shape)}")
            draws.append(theta.clone())
    return {"theta": torch.stack(draws, 1), "path": path}
