"""Hamiltonian Monte Carlo batched over chains, each chain with its own step size and number of steps.

MALA is the one-leapfrog-step special case. Chains that need fewer steps (or diverge) wait
masked while the others finish, so a step costs ``max(num_steps)`` batched evaluations.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from ppl.inference.mcmc.fusion import runner
from ppl.inference.mcmc.state import (ChainState, LogDensityFn, StepInfo, kinetic, make_state,
                                      sample_momentum, velocity)


def leapfrog(logp_and_grad: LogDensityFn, z, p, grad, eps: torch.Tensor, inv_mass: torch.Tensor):
    """One velocity-Verlet step for every chain; ``eps`` is (C, 1) (negative integrates backwards).

    A target offering its own fused ``leapfrog`` method (as :class:`Potential` does) is used through it.
    """
    fused = getattr(logp_and_grad, "leapfrog", None)
    if fused is not None:
        return fused(z, p, grad, eps, inv_mass)
    p = p + 0.5 * eps * grad
    z = z + eps * velocity(p, inv_mass)
    lp, grad = logp_and_grad(z)
    p = p + 0.5 * eps * grad
    return z, p, lp, grad


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.reshape(mask.shape + (1,) * (a.dim() - 1)), a, b)


def _integrate_one(lf, z, p, lp, grad, diverged, left, eps, inv_mass, h0, threshold):
    """One leapfrog step of the chains with steps ``left`` that have not diverged; the others wait."""
    active = (left > 0) & ~diverged
    z1, p1, lp1, g1 = lf(z, p, grad, eps, inv_mass)
    h1 = -lp1 + kinetic(p1, inv_mass)
    bad = active & (~torch.isfinite(h1) | (h1 - h0 > threshold))
    keep = active & ~bad
    return (_where(keep, z1, z), _where(keep, p1, p), torch.where(keep, lp1, lp), _where(keep, g1, grad),
            diverged | bad, left - active.long())


class HMC:
    """HMC with a fixed number of leapfrog steps, or ``ceil(trajectory_length / step_size)`` per chain.

    ``jitter`` draws each chain's step size uniformly within +-jitter of its value at every
    transition (the driver's ``hmc`` engine uses 0.2), which avoids periodic trajectories.

    ``init(z, step_size, inv_mass)`` evaluates the target; ``step(state)`` draws a momentum,
    integrates, and accepts or rejects per chain. ``divergence_threshold`` bounds the energy error.
    """

    name = "hmc"
    target_accept = 0.8

    def __init__(self, logp_and_grad: LogDensityFn, num_steps: int = 10,
                 trajectory_length: Optional[float] = None, max_steps: int = 1024,
                 divergence_threshold: float = 1000.0, jitter: float = 0.0) -> None:
        if int(num_steps) < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        self.logp_and_grad = logp_and_grad
        self.num_steps = int(num_steps)
        self.trajectory_length = trajectory_length
        self.max_steps = int(max_steps)
        self.divergence_threshold = float(divergence_threshold)
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
        self.jitter = float(jitter)

    def init(self, z: torch.Tensor, step_size: Union[float, torch.Tensor] = 0.1,
             inv_mass: Optional[torch.Tensor] = None, dense: bool = False) -> ChainState:
        return make_state(self.logp_and_grad, z, step_size, inv_mass, dense)

    def steps_for(self, state: ChainState) -> torch.Tensor:
        """Leapfrog steps per chain, shape (C,)."""
        if self.trajectory_length is None:
            return torch.full_like(state.lp, self.num_steps, dtype=torch.long)
        n = torch.ceil(self.trajectory_length / state.step_size).long()
        return n.clamp(1, self.max_steps)

    def step(self, state: ChainState, num_steps: Optional[torch.Tensor] = None) -> Tuple[ChainState, StepInfo]:
        n = self.steps_for(state) if num_steps is None else torch.as_tensor(num_steps, device=state.z.device).long().expand_as(state.lp)
        return self._integrate(state, n)

    def probe(self, state: ChainState) -> torch.Tensor:
        """Acceptance probability of one leapfrog step (for the initial step-size search)."""
        p = sample_momentum(state.inv_mass, state.z)
        h0 = -state.lp + kinetic(p, state.inv_mass)
        _, p1, lp1, _ = leapfrog(self.logp_and_grad, state.z, p, state.grad, state.step_size.unsqueeze(-1), state.inv_mass)
        log_a = torch.nan_to_num(h0 - (-lp1 + kinetic(p1, state.inv_mass)), nan=-math.inf)
        return log_a.clamp(max=0.0).exp()

    def _integrate(self, state: ChainState, n: torch.Tensor) -> Tuple[ChainState, StepInfo]:
        inv_mass = state.inv_mass
        p0 = sample_momentum(inv_mass, state.z)
        h0 = -state.lp + kinetic(p0, inv_mass)
        eps = state.step_size.unsqueeze(-1)
        if self.jitter:  # a random step size per chain and transition breaks periodic trajectories
            eps = eps * (1 + self.jitter * (2 * torch.rand_like(eps) - 1))
        threshold = torch.tensor(self.divergence_threshold, dtype=h0.dtype, device=h0.device)
        args = (state.z, p0, state.lp, state.grad, torch.zeros_like(n, dtype=torch.bool), n, eps, inv_mass, h0, threshold)
        step = runner(self.logp_and_grad, "hmc_leapfrog", _integrate_one, args, state.z)
        total = int(n.max())
        for _ in range(total):
            args = step(*args) + args[6:]
        z, p, lp, grad, diverged, left = args[:6]
        useful = n - left
        h = -lp + kinetic(p, inv_mass)
        log_a = torch.where(diverged, torch.full_like(h, -math.inf), torch.nan_to_num(h0 - h, nan=-math.inf))
        accept = torch.rand_like(h).log() < log_a
        new = ChainState(_where(accept, z, state.z), torch.where(accept, lp, state.lp),
                         _where(accept, grad, state.grad), state.step_size, inv_mass)
        info = StepInfo(
            accept_prob=log_a.clamp(max=0.0).exp(), accepted=accept, diverging=diverged,
            energy=torch.where(accept, h, h0), n_steps=useful, tree_depth=torch.zeros_like(n),
            n_evals=total, extra={"proposal": z, "momentum": p, "start": state.z},
        )
        return new, info


class MALA(HMC):
    """Metropolis-adjusted Langevin: exactly HMC with one leapfrog step (same proposal and acceptance)."""

    name = "mala"
    target_accept = 0.574

    def __init__(self, logp_and_grad: LogDensityFn, divergence_threshold: float = 1000.0) -> None:
        super().__init__(logp_and_grad, num_steps=1, divergence_threshold=divergence_threshold)
