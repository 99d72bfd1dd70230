"""Elliptical slice sampling (Murray, Adams & MacKay 2010), batched over chains.

The target is written ``N(z; mean, diag(inv_mass)) * exp(L(z))`` with ``L = log target - log N``,
exact for any target: with a Gaussian prior and ``mean`` / ``inv_mass`` set to it, ``L`` is the
likelihood; otherwise the driver fits the Gaussian to warmup draws. Each chain shrinks its own
angle bracket; the batch loops until every chain has accepted (a chain always accepts as its
bracket shrinks to its current point).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from ppl.inference.mcmc.state import ChainState, LogDensityFn, StepInfo, make_state


def _log_normal(z: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return -0.5 * (((z - mean) ** 2) / var + var.log() + math.log(2 * math.pi)).sum(-1)


class EllipticalSlice:
    """Elliptical slice sampler with a diagonal Gaussian reference ``N(mean, inv_mass)``."""

    name = "elliptical_slice"
    target_accept = None  # no step size to adapt

    def __init__(self, logp_and_grad: LogDensityFn, mean: Union[float, torch.Tensor] = 0.0,
                 max_shrinks: int = 100) -> None:
        self.logp_and_grad = logp_and_grad
        self.mean = mean
        self.max_shrinks = int(max_shrinks)

    def init(self, z: torch.Tensor, step_size=1.0, inv_mass: Optional[torch.Tensor] = None, dense: bool = False) -> ChainState:
        if dense:
            raise ValueError("elliptical slice sampling supports a diagonal Gaussian reference only (dense=False)")
        return make_state(self.logp_and_grad, z, step_size, inv_mass)

    def step(self, state: ChainState) -> Tuple[ChainState, StepInfo]:
        z0, var = state.z, state.inv_mass
        mean = torch.as_tensor(self.mean, dtype=z0.dtype, device=z0.device).expand_as(z0)
        loglik0 = state.lp - _log_normal(z0, mean, var)
        nu = torch.randn_like(z0) * var.sqrt()
        log_y = loglik0 + torch.rand_like(loglik0).log()
        theta = torch.rand_like(loglik0) * 2 * math.pi
        lo, hi = theta - 2 * math.pi, theta.clone()
        z, lp, grad = z0, state.lp, state.grad
        pending = torch.ones_like(loglik0, dtype=torch.bool)
        n_steps = torch.zeros_like(loglik0, dtype=torch.long)
        evals = 0
        for _ in range(self.max_shrinks):
            zt = mean + (z0 - mean) * theta.cos().unsqueeze(-1) + nu * theta.sin().unsqueeze(-1)
            lpt, gt = self.logp_and_grad(zt)
            evals += 1
            n_steps = n_steps + pending.long()
            ok = pending & (lpt - _log_normal(zt, mean, var) > log_y)
            m = ok.unsqueeze(-1)
            z, lp, grad = torch.where(m, zt, z), torch.where(ok, lpt, lp), torch.where(m, gt, grad)
            pending = pending & ~ok
            if not bool(pending.any()):
                break
            lo = torch.where(pending & (theta < 0), theta, lo)
            hi = torch.where(pending & (theta >= 0), theta, hi)
            theta = torch.where(pending, lo + (hi - lo) * torch.rand_like(theta), theta)
        moved = ~pending
        new = ChainState(z, lp, grad, state.step_size, var)
        info = StepInfo(accept_prob=moved.to(z0.dtype), accepted=moved, diverging=torch.zeros_like(moved),
                        energy=-lp, n_steps=n_steps, tree_depth=torch.zeros_like(n_steps), n_evals=evals)
        return new, info
