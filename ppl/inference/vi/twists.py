"""Learned twists for twisted SMC, trained by contrastive twist learning (CTL; Zhao et al. 2024).

A twist psi_t(x_t) makes the intermediate targets pi_t ∝ p(x_{0:t}, y_{0:t}) psi_t(x_t); the
optimal one is psi_t = p(y_{t+1:T-1} | x_t), for which pi_t is the smoothing marginal. CTL
minimises sum_t KL(p(x_t | y_{0:T-1}) || pi_t), whose gradient is E_{pi_t}[grad log psi_t] -
E_{posterior}[grad log psi_t]: negatives are the weighted particles of a twisted SMC run at step
t, positives its final weighted trajectories. :func:`lgssm_optimal_twist` is the closed-form
reference on the linear-Gaussian state-space model.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple

import torch
from torch import nn

from ppl.inference.runtime import Seed, seeded
from ppl.inference.smc.feynman_kac import FeynmanKac, SMCOutput, State, run_smc
from ppl.inference.smc.twisted import TwistedFK
from ppl.inference.vi.train import History, train


class QuadraticTwist(nn.Module):
    """log psi_t(x) = h_t x - P_t x^2 / 2 per step t = 0 .. T-2 (scalar state ``state[key]``), P_t = softplus(raw) >= 0 (initially 0.31).

    The additive constant of log psi_t is left out: it cancels in the normalised weights and
    telescopes out of log Z.
    """

    def __init__(self, num_steps: int, key: str = "x", dtype: torch.dtype = torch.float64, device: Optional[Any] = None) -> None:
        super().__init__()
        if int(num_steps) < 2:
            raise ValueError(f"a twist needs at least 2 time steps, got num_steps={num_steps!r}")
        self.key = key
        self.h = nn.Parameter(torch.zeros(int(num_steps) - 1, dtype=dtype, device=device))
        self.raw_precision = nn.Parameter(torch.full((int(num_steps) - 1,), -1.0, dtype=dtype, device=device))

    @property
    def precision(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_precision)

    def log_psi_of(self, t: int, x: torch.Tensor) -> torch.Tensor:
        """log psi_t at values ``x`` (n,)."""
        return self.h[t] * x - 0.5 * self.precision[t] * x * x

    def forward(self, t: int, state: State) -> torch.Tensor:
        """The twist in the form :class:`~ppl.inference.smc.TwistedFK` takes: ``log_psi(t, state) -> (n,)``."""
        if self.key not in state:
            raise KeyError(f"the twist reads state[{self.key!r}], but the state has keys {sorted(state)}")
        return self.log_psi_of(t, state[self.key])


def lgssm_optimal_twist(y: torch.Tensor, a: float = 0.9, q: float = 1.0, r: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Natural parameters (h_t, P_t), t = 0..T-2, of log p(y_{t+1:T-1} | x_t) = h_t x - P_t x^2 / 2 + c_t (float64).

    Backward information filter: with J = P_{t+1} + 1/r^2 and k = h_{t+1} + y_{t+1}/r^2,
    P_t = a^2 J / (1 + q^2 J) and h_t = a k / (1 + q^2 J), starting from P_{T-1} = h_{T-1} = 0.
    """
    y = torch.as_tensor(y, dtype=torch.float64).cpu()
    T = y.shape[0]
    h = torch.zeros(T, dtype=torch.float64)
    P = torch.zeros(T, dtype=torch.float64)
    for t in range(T - 2, -1, -1):
        J = P[t + 1] + 1.0 / r**2
        k = h[t + 1] + y[t + 1] / r**2
        P[t] = a * a * J / (1 + q * q * J)
        h[t] = a * k / (1 + q * q * J)
    return h[:-1], P[:-1]


class LGSSMTwistedProposalFK(FeynmanKac):
    """The 1-D LGSSM proposing from the fully twisted proposal q_t ∝ p(x_t | x_{t-1}) p(y_t | x_t) psi_t(x_t).

    With a quadratic twist q_t is Gaussian and its normaliser is closed-form, so the weight is
    G_t = Z_t(x_{t-1}) / psi_{t-1}(x_{t-1}); with the optimal twist every weight is constant and
    log Z has zero variance. Targets and the final log Z are the same as :class:`TwistedFK`'s.
    """

    def __init__(self, y: torch.Tensor, twist: QuadraticTwist, a: float = 0.9, q: float = 1.0, r: float = 0.5,
                 s0: Optional[float] = None) -> None:
        self.y, self.twist, self.a, self.q, self.r = y, twist, a, q, r
        self.s0 = q / (1 - a * a) ** 0.5 if s0 is None else s0
        self.num_steps = len(y)
        self.key = twist.key

    def _move(self, t: int, mu: torch.Tensor, var: float):
        T = self.num_steps
        h = self.twist.h[t] if t < T - 1 else mu.new_zeros(())
        P = self.twist.precision[t] if t < T - 1 else mu.new_zeros(())
        y, r2 = self.y[t], self.r**2
        lam = 1.0 / var + 1.0 / r2 + P
        eta = mu / var + y / r2 + h
        x = eta / lam + lam.rsqrt() * torch.randn_like(mu)
        log_norm = (-0.5 * math.log(2 * math.pi * r2) - 0.5 * torch.log(var * lam)
                    + 0.5 * eta**2 / lam - 0.5 * mu**2 / var - 0.5 * y**2 / r2)
        return x, log_norm

    def init(self, n: int):
        mu = torch.zeros(n, dtype=self.y.dtype, device=self.y.device)
        x, log_g = self._move(0, mu, self.s0**2)
        return {self.key: x}, log_g

    def step(self, t: int, state: State):
        xp = state[self.key]
        x, log_norm = self._move(t, self.a * xp, self.q**2)
        return {self.key: x}, log_norm - self.twist.log_psi_of(t - 1, xp)


def contrastive_twist_loss(out: SMCOutput, twist: QuadraticTwist) -> torch.Tensor:
    """CTL surrogate from one twisted SMC run (``keep_history=True``): its gradient is the CTL gradient.

    sum_t mean over systems of [sum_i W_t^i log psi_t(x_t^i) - sum_j W^j log psi_t(x_t^(j))], with
    W_t the normalised weights after step t (negatives from pi_t) and W the final weights of the
    traced trajectories x^(j) (positives from the posterior); weights and samples are constants.
    """
    if not out.states:
        raise ValueError("contrastive_twist_loss needs the run's history: run_smc(..., keep_history=True)")
    S, N = out.num_systems, out.num_particles
    key = twist.key
    paths = out.trajectories()[key].detach()  # (S*N, T)
    w_pos = torch.softmax(out.log_weights.detach(), -1)  # (S, N)
    T = paths.shape[1]
    total = 0.0
    for t in range(T - 1):
        w_neg = out.log_weight_history[t].exp()
        neg = (w_neg * twist.log_psi_of(t, out.states[t][key].detach()).reshape(S, N)).sum(-1)
        pos = (w_pos * twist.log_psi_of(t, paths[:, t]).reshape(S, N)).sum(-1)
        total = total + (neg - pos).mean()
    return total


def train_twists(base: Optional[FeynmanKac], twist: QuadraticTwist, *, particles: int = 128, systems: int = 4,
                 steps: int = 200, lr: float = 0.05, resampling: str = "systematic", ess_threshold: float = 0.5,
                 twisted: Optional[FeynmanKac] = None, seed: Seed = None, **train_kwargs: Any) -> History:
    """Fit ``twist`` by CTL: each step runs twisted SMC with the current twist (no grad) and descends the surrogate.

    The SMC runs on ``TwistedFK(base, twist)``, or on ``twisted`` (an FK model that already uses
    ``twist``, e.g. :class:`LGSSMTwistedProposalFK`) when given.
    """
    if twisted is None:
        if base is None:
            raise ValueError("train_twists needs a base Feynman–Kac model or a twisted one (twisted=...)")
        twisted = TwistedFK(base, twist)

    def loss(step: int, batch) -> torch.Tensor:
        with torch.no_grad():
            out = run_smc(twisted, particles, systems=systems, resampling=resampling,
                          ess_threshold=ess_threshold, keep_history=True)
        return contrastive_twist_loss(out, twist)

    with seeded(seed):
        return train(loss, list(twist.parameters()), steps=steps, lr=lr, seed=seed, **train_kwargs)


__all__: Sequence[str] = ["QuadraticTwist", "LGSSMTwistedProposalFK", "lgssm_optimal_twist", "contrastive_twist_loss", "train_twists"]
