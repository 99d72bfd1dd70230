"""ChEES-HMC (Hoffman, Radul & Sountsov 2021): HMC whose trajectory length is tuned across many chains.

Each transition runs HMC for a jittered time ``u * T`` (``u ~ U(0, 1)``, shared by the batch),
i.e. ``ceil(u T / step_size)`` leapfrog steps per chain. In warmup the driver calls
:meth:`ChEES.adapt` to move log T by Adam along the gradient of the ChEES criterion (the change
in centred squared distance), estimated from all chains and weighted by acceptance.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Tuple

import torch

from ppl.inference.mcmc.hmc import HMC
from ppl.inference.mcmc.state import ChainState, LogDensityFn, StepInfo, velocity


class ChEESAdam(NamedTuple):
    """Adam state for log trajectory length."""

    log_t: float
    m: float = 0.0
    v: float = 0.0
    t: int = 0


class ChEES(HMC):
    """Jittered HMC with a trajectory length ``trajectory_length`` shared by all chains (needs >= 2 chains to adapt)."""

    name = "chees"
    target_accept = 0.651

    def __init__(self, logp_and_grad: LogDensityFn, trajectory_length: float = 1.0, max_steps: int = 1000,
                 learning_rate: float = 0.025, divergence_threshold: float = 1000.0) -> None:
        super().__init__(logp_and_grad, trajectory_length=trajectory_length, max_steps=max_steps,
                         divergence_threshold=divergence_threshold)
        self.learning_rate = learning_rate
        self.adam = ChEESAdam(math.log(trajectory_length))
        self._jitter = 1.0

    def step(self, state: ChainState, num_steps=None) -> Tuple[ChainState, StepInfo]:
        if num_steps is None:
            self._jitter = float(torch.rand(()))
            n = torch.ceil(self._jitter * self.trajectory_length / state.step_size).long().clamp(1, self.max_steps)
            num_steps = n
        return super().step(state, num_steps)

    def adapt(self, info: StepInfo, inv_mass: torch.Tensor, step_size: torch.Tensor) -> None:
        """One Adam step on log T from the ChEES gradient of the last transition (warmup only)."""
        z0, z1, p1 = info.extra["start"], info.extra["proposal"], info.extra["momentum"]
        if z0.shape[0] < 2:
            return
        alpha = torch.nan_to_num(info.accept_prob, nan=0.0)
        ok = torch.isfinite(z1).all(-1) & torch.isfinite(p1).all(-1) & ~info.diverging
        alpha = torch.where(ok, alpha, torch.zeros_like(alpha))
        z1 = torch.where(ok.unsqueeze(-1), z1, z0)
        p1 = torch.where(ok.unsqueeze(-1), p1, torch.zeros_like(p1))
        c1, c0 = z1 - z1.mean(0), z0 - z0.mean(0)
        diff = (c1 * c1).sum(-1) - (c0 * c0).sum(-1)
        g = self._jitter * diff * (c1 * velocity(p1, inv_mass)).sum(-1)
        if float(alpha.sum()) <= 0:
            return
        grad = float((alpha * g).sum() / alpha.sum()) * self.trajectory_length  # d/d log T
        a = self.adam
        t, b1, b2 = a.t + 1, 0.0, 0.95
        m = b1 * a.m + (1 - b1) * grad
        v = b2 * a.v + (1 - b2) * grad * grad
        step = self.learning_rate * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + 1e-8)
        lo = math.log(float(step_size.min()))
        hi = math.log(float(step_size.max()) * self.max_steps)
        log_t = min(max(a.log_t + step, lo), hi)
        self.adam = ChEESAdam(log_t, m, v, t)
        self.trajectory_length = math.exp(log_t)
