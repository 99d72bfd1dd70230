"""MCMC moves for SMC samplers: batched RWMH and MALA scaled from the particle cloud, and an adapter
that runs any kernel of ``ppl.inference.mcmc`` (``init(z) -> state``, ``step(state) -> (state, info)``).

A move leaves the tempered target pi_beta(z) = exp(base(z) + beta * incr(z)) invariant, so the
particles' weights are unchanged. Its scale comes from the (resampled, equally weighted) cloud:
the per-coordinate sd (diagonal) or the covariance's Cholesky factor (dense), times a factor
adapted from the acceptance rate between SMC steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import torch

TermsFn = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
"""``z (N, D) -> (base (N,), incr (N,))``: the tempered log target is base + beta * incr."""
TermsGradFn = Callable[[torch.Tensor, float], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""``(z, beta) -> (base, incr, grad of base + beta * incr)``."""


@dataclass
class MoveInfo:
    """Mean acceptance rate of the move, the scale factor it used and how many kernel steps it took."""

    acceptance: float
    scale: float
    steps: Optional[int] = None


def max_correlation(start: torch.Tensor, z: torch.Tensor) -> float:
    """The largest, over coordinates, correlation across particles between ``start`` and ``z`` (N, D).

    How much of where each particle started a move still shows in where it is: near 0, the move has
    decorrelated the cloud in every direction (one host sync).
    """
    a, b = start - start.mean(0), z - z.mean(0)
    corr = (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0)).clamp(min=torch.finfo(z.dtype).tiny)
    return float(corr.max())


def cloud_scale(z: torch.Tensor, dense: bool) -> torch.Tensor:
    """Proposal shape from the particles: sd (D,) or a Cholesky factor (D, D) of their covariance."""
    n, d = z.shape
    if n < 2:
        return torch.ones(d, dtype=z.dtype, device=z.device)
    zc = z - z.mean(0)
    if not dense:
        return zc.pow(2).mean(0).sqrt().clamp(min=1e-8)
    cov = zc.T @ zc / (n - 1) + 1e-8 * torch.eye(d, dtype=z.dtype, device=z.device)
    return torch.linalg.cholesky(cov)


def _metropolis(log_ratio: torch.Tensor, proposed: Tuple[torch.Tensor, ...], current: Tuple[torch.Tensor, ...]):
    """Accept each particle's proposal with probability min(1, exp(log_ratio)); a NaN ratio rejects.

    Returns the acceptance mask and, for each pair, the proposed value where accepted else the current.
    """
    accept = torch.log(torch.rand_like(log_ratio)) < torch.nan_to_num(log_ratio, nan=-math.inf)
    kept = tuple(torch.where(accept.reshape(accept.shape + (1,) * (p.dim() - 1)), p, c)
                 for p, c in zip(proposed, current))
    return accept, kept


class _AdaptiveScale:
    """A scale factor adapted between SMC steps toward a target acceptance rate."""

    target_accept: float
    factor: Optional[float]

    def _adapt(self, accepted: torch.Tensor, steps: int) -> MoveInfo:
        acc = float(accepted) / steps  # one host sync per move, not per step
        info = MoveInfo(acc, self.factor)
        self.factor *= math.exp(acc - self.target_accept)
        return info


def _noise(shape: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    xi = torch.randn_like(like)
    return xi @ shape.T if shape.dim() == 2 else xi * shape


class RWMHMove(_AdaptiveScale):
    """Random-walk Metropolis with proposal N(z, (s c)^2 Sigma_cloud); s adapts toward ``target_accept``."""

    needs_grad = False

    def __init__(self, steps: int = 5, dense: bool = False, target_accept: float = 0.3) -> None:
        if int(steps) < 1:
            raise ValueError(f"move steps must be a positive integer, got {steps!r}")
        self.steps, self.dense, self.target_accept = int(steps), dense, target_accept
        self.factor: Optional[float] = None

    def __call__(self, z, base, incr, beta: float, terms: TermsFn, terms_grad: Optional[TermsGradFn] = None):
        d = z.shape[1]
        if self.factor is None:
            self.factor = 2.38 / math.sqrt(d)
        shape = cloud_scale(z, self.dense) * self.factor
        accepted = z.new_zeros(())
        for _ in range(self.steps):
            prop = z + _noise(shape, z)
            pb, pi = terms(prop)
            log_ratio = (pb + beta * pi) - (base + beta * incr)
            accept, (z, base, incr) = _metropolis(log_ratio, (prop, pb, pi), (z, base, incr))
            accepted = accepted + accept.to(z.dtype).mean()
        return z, base, incr, self._adapt(accepted, self.steps)


class MALAMove(_AdaptiveScale):
    """Preconditioned Langevin (MALA) with the cloud's sd as the metric; step adapts toward ``target_accept``."""

    needs_grad = True

    def __init__(self, steps: int = 5, target_accept: float = 0.57) -> None:
        if int(steps) < 1:
            raise ValueError(f"move steps must be a positive integer, got {steps!r}")
        self.steps, self.target_accept = int(steps), target_accept
        self.factor: Optional[float] = None

    def __call__(self, z, base, incr, beta: float, terms: TermsFn, terms_grad: Optional[TermsGradFn] = None):
        if terms_grad is None:
            raise ValueError("MALA needs gradients of the target")
        d = z.shape[1]
        if self.factor is None:
            self.factor = 1.65 / d ** (1 / 6)
        sd = cloud_scale(z, dense=False)
        h = (self.factor * sd) ** 2  # (D,) per-coordinate step
        _, _, grad = terms_grad(z, beta)
        accepted = z.new_zeros(())
        for _ in range(self.steps):
            mean = z + 0.5 * h * grad
            prop = mean + h.sqrt() * torch.randn_like(z)
            pb, pi, pgrad = terms_grad(prop, beta)
            back = prop + 0.5 * h * pgrad
            log_q_fwd = -0.5 * ((prop - mean) ** 2 / h).sum(-1)
            log_q_bwd = -0.5 * ((z - back) ** 2 / h).sum(-1)
            log_ratio = (pb + beta * pi) - (base + beta * incr) + log_q_bwd - log_q_fwd
            accept, (z, grad, base, incr) = _metropolis(log_ratio, (prop, pgrad, pb, pi), (z, grad, base, incr))
            accepted = accepted + accept.to(z.dtype).mean()
        return z, base, incr, self._adapt(accepted, self.steps)


class KernelMove:
    """Any ``ppl.inference.mcmc`` kernel class (e.g. ``HMC``) as a move, built per temperature.

    ``kernel_cls(logp_and_grad, **kernel_kwargs)`` must offer ``init(z, step_size, inv_mass, dense)``
    and ``step(state) -> (state, info)`` with ``info.accept_prob``; the inverse mass matrix is
    the cloud's variance (its full covariance with ``dense=True``, for strongly correlated or
    badly scaled posteriors), the step size adapts toward ``target_accept`` between SMC steps.
    ``steps`` kernel steps per move; with ``decorrelate`` (a correlation, e.g. 0.1) the move goes on
    until no coordinate's correlation across particles between start and end exceeds it, or
    ``max_steps`` (as PyMC's SMC does): as many steps as each temperature needs, not a fixed guess.
    """

    needs_grad = True

    def __init__(self, kernel_cls: Any, steps: int = 1, target_accept: Optional[float] = None, step_size: float = 0.5,
                 dense: bool = False, decorrelate: Optional[float] = None, max_steps: int = 50,
                 **kernel_kwargs: Any) -> None:
        if target_accept is None:  # the kernel's own preference (e.g. 0.234 for RWMH, 0.8 for HMC)
            target_accept = float(getattr(kernel_cls, "target_accept", 0.65))
        if decorrelate is not None and not 0.0 < decorrelate < 1.0:
            raise ValueError(f"decorrelate must be a correlation in (0, 1), got {decorrelate!r}")
        self.kernel_cls, self.steps, self.target_accept = kernel_cls, int(steps), target_accept
        self.decorrelate, self.max_steps = decorrelate, max(int(max_steps), int(steps))
        self.step_size = step_size
        self.dense = bool(dense)
        self.kernel_kwargs = kernel_kwargs

    def __call__(self, z, base, incr, beta: float, terms: TermsFn, terms_grad: Optional[TermsGradFn] = None):
        if terms_grad is None:
            raise ValueError(f"{self.kernel_cls.__name__} needs gradients of the target")

        def logp_and_grad(x):
            b, i, g = terms_grad(x, beta)
            return b + beta * i, g

        kernel = self.kernel_cls(logp_and_grad, **self.kernel_kwargs)
        if self.dense:
            chol = cloud_scale(z, dense=True)
            cov = (chol @ chol.T).expand(z.shape[0], -1, -1).contiguous()
            state = kernel.init(z, step_size=self.step_size, inv_mass=cov, dense=True)
        else:
            state = kernel.init(z, step_size=self.step_size, inv_mass=cloud_scale(z, dense=False) ** 2)
        acc_total, taken, start = 0.0, 0, z
        while taken < self.steps or (self.decorrelate is not None and taken < self.max_steps
                                     and max_correlation(start, state.z) > self.decorrelate):
            state, info = kernel.step(state)
            acc_total += float(info.accept_prob.double().mean())
            taken += 1
        acc = acc_total / taken
        used = self.step_size
        self.step_size *= math.exp(acc - self.target_accept)
        z = state.z.detach()
        base, incr = terms(z)
        return z, base, incr, MoveInfo(acc, used, taken)


def make_move(move: Any, steps: int = 5) -> Any:
    """A move from a name ("rwmh", "mala", "hmc", "hmc-dense"), a move object, or an mcmc kernel class."""
    if isinstance(move, str):
        name = move.lower()
        if name == "rwmh":
            return RWMHMove(steps)
        if name == "mala":
            return MALAMove(steps)
        if name in ("hmc", "hmc-dense"):
            from ppl.inference.mcmc.hmc import HMC

            return KernelMove(HMC, steps=max(1, steps // 2), num_steps=5, dense=name == "hmc-dense")
        raise ValueError(f"unknown move {move!r}; use 'rwmh', 'mala', 'hmc', 'hmc-dense', a move object or an "
                         "mcmc kernel class")
    if isinstance(move, type):
        return KernelMove(move, steps=steps)
    if callable(move):
        return move
    raise TypeError(f"move must be a name, a move object or a kernel class, got {type(move).__name__}")
