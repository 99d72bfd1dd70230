"""Chain state, the mass-matrix (metric) algebra, and warmup adaptation shared by every kernel.

All tensors are batched over chains in dimension 0: positions ``(C, D)``, log densities ``(C,)``,
step sizes ``(C,)``, inverse mass matrices ``(C, D)`` (diagonal) or ``(C, D, D)`` (dense).
"""
from __future__ import annotations

import math
from typing import Callable, List, NamedTuple, Optional, Tuple, Union

import torch

LogDensityFn = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
"""``z (C, D) -> (log density (C,), gradient (C, D))``; points are independent."""


class ChainState(NamedTuple):
    """Where a batch of chains is, and the tuning each chain uses for its next step.

    ``step_size`` is the leapfrog step (HMC family) or the proposal scale (RWMH); ``inv_mass`` is
    the diagonal ``(C, D)`` or dense ``(C, D, D)`` inverse mass matrix (the proposal covariance
    for RWMH). Change tuning with ``state._replace(step_size=...)``.
    """

    z: torch.Tensor
    lp: torch.Tensor
    grad: torch.Tensor
    step_size: torch.Tensor
    inv_mass: torch.Tensor


class StepInfo(NamedTuple):
    """What one transition did, per chain (all ``(C,)``)."""

    accept_prob: torch.Tensor   # mean Metropolis acceptance statistic of the transition
    accepted: torch.Tensor      # bool: the chain moved
    diverging: torch.Tensor     # bool: energy error above the divergence threshold
    energy: torch.Tensor        # Hamiltonian of the returned point (lp for RWMH)
    n_steps: torch.Tensor       # log-density evaluations this chain needed (useful work)
    tree_depth: torch.Tensor    # NUTS tree depth (0 for other kernels)
    n_evals: int                # evaluations the batch actually ran (lockstep cost, per chain)
    extra: Optional[dict] = None


def make_state(
    logp_and_grad: LogDensityFn,
    z: torch.Tensor,
    step_size: Union[float, torch.Tensor] = 0.1,
    inv_mass: Optional[torch.Tensor] = None,
    dense: bool = False,
) -> ChainState:
    """Evaluate the target at ``z`` (C, D) and attach broadcast tuning parameters."""
    if z.dim() != 2:
        raise ValueError(f"initial points must have shape (chains, dim), got {tuple(z.shape)}")
    c, d = z.shape
    lp, grad = logp_and_grad(z)
    eps = torch.as_tensor(step_size, dtype=z.dtype, device=z.device)
    eps = eps.expand(c).clone() if eps.dim() == 0 else eps.reshape(c).clone()
    if inv_mass is None:
        inv_mass = torch.eye(d, dtype=z.dtype, device=z.device) if dense else z.new_ones(d)
    inv_mass = torch.as_tensor(inv_mass, dtype=z.dtype, device=z.device)
    if inv_mass.dim() == 1 or (dense and inv_mass.dim() == 2):
        inv_mass = inv_mass.expand((c,) + tuple(inv_mass.shape)).clone()
    return ChainState(z, lp, grad, eps, inv_mass)


# ------------------------------------------------------------------------------------ metric
def is_dense(inv_mass: torch.Tensor) -> bool:
    return inv_mass.dim() == 3


def velocity(p: torch.Tensor, inv_mass: torch.Tensor) -> torch.Tensor:
    """dz/dt = M^{-1} p, per chain."""
    if is_dense(inv_mass):
        return torch.bmm(inv_mass, p.unsqueeze(-1)).squeeze(-1)
    return inv_mass * p


def kinetic(p: torch.Tensor, inv_mass: torch.Tensor) -> torch.Tensor:
    """0.5 p^T M^{-1} p, shape (C,)."""
    return 0.5 * (p * velocity(p, inv_mass)).sum(-1)


def sample_momentum(inv_mass: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """p ~ N(0, M) with M = inv_mass^{-1}."""
    xi = torch.randn_like(like)
    if is_dense(inv_mass):
        chol = torch.linalg.cholesky(inv_mass)  # inv_mass = L L^T  =>  p = L^{-T} xi has cov M
        return torch.linalg.solve_triangular(chol.transpose(-1, -2), xi.unsqueeze(-1), upper=True).squeeze(-1)
    return xi * inv_mass.rsqrt()


def scaled_noise(inv_mass: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """xi ~ N(0, inv_mass): the random-walk proposal shape."""
    xi = torch.randn_like(like)
    if is_dense(inv_mass):
        return torch.bmm(torch.linalg.cholesky(inv_mass), xi.unsqueeze(-1)).squeeze(-1)
    return xi * inv_mass.sqrt()


# ------------------------------------------------------------------------------- step size
class DualAveraging(NamedTuple):
    """Nesterov dual averaging of log step size, one per chain (Hoffman & Gelman 2014, Stan's constants)."""

    log_eps: torch.Tensor
    log_eps_bar: torch.Tensor
    h_bar: torch.Tensor
    mu: torch.Tensor
    t: int

    @staticmethod
    def start(step_size: torch.Tensor) -> "DualAveraging":
        log_eps = step_size.log()
        return DualAveraging(log_eps, torch.zeros_like(log_eps), torch.zeros_like(log_eps),
                             math.log(10.0) + log_eps, 0)

    def update(self, accept_prob: torch.Tensor, target: float, gamma: float = 0.05,
               t0: float = 10.0, kappa: float = 0.75) -> "DualAveraging":
        t = self.t + 1
        a = torch.nan_to_num(accept_prob, nan=0.0).clamp(0.0, 1.0)
        h_bar = (1 - 1 / (t + t0)) * self.h_bar + (target - a) / (t + t0)
        log_eps = self.mu - math.sqrt(t) / gamma * h_bar
        w = t ** (-kappa)
        log_eps_bar = w * log_eps + (1 - w) * self.log_eps_bar
        return DualAveraging(log_eps, log_eps_bar, h_bar, self.mu, t)

    @property
    def step_size(self) -> torch.Tensor:
        return self.log_eps.exp()

    @property
    def final_step_size(self) -> torch.Tensor:
        return self.log_eps_bar.exp()


def find_reasonable_step_size(kernel, state: ChainState, max_iter: int = 50) -> torch.Tensor:
    """Per-chain heuristic of Hoffman & Gelman (2014, Alg. 4): double / halve until acceptance crosses 1/2."""
    eps = state.step_size.clone()
    direction = None
    for _ in range(max_iter):
        prob = kernel.probe(state._replace(step_size=eps))
        up = prob > 0.5
        if direction is None:
            direction = up
        change = up == direction
        if not bool(change.any()):
            break
        eps = torch.where(change, torch.where(direction, eps * 2.0, eps * 0.5), eps)
    return eps.clamp(1e-6, 1e3)


# ------------------------------------------------------------------------------ mass matrix
class Welford(NamedTuple):
    """Running per-chain mean and (co)variance of positions."""

    n: int
    mean: torch.Tensor
    m2: torch.Tensor  # (C, D) sum of squares, or (C, D, D) with dense

    @staticmethod
    def start(z: torch.Tensor, dense: bool) -> "Welford":
        m2 = z.new_zeros(z.shape + (z.shape[1],)) if dense else torch.zeros_like(z)
        return Welford(0, torch.zeros_like(z), m2)

    def update(self, z: torch.Tensor) -> "Welford":
        n = self.n + 1
        delta = z - self.mean
        mean = self.mean + delta / n
        if self.m2.dim() == 3:
            m2 = self.m2 + delta.unsqueeze(-1) * (z - mean).unsqueeze(-2)
        else:
            m2 = self.m2 + delta * (z - mean)
        return Welford(n, mean, m2)

    def inv_mass(self, pool: bool = False, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Stan's regularised estimate: shrink the sample covariance towards 1e-3 I.

        With ``pool`` every chain gets the covariance of all chains' draws together (chains share
        a target, so C chains give C times the draws), broadcast back to ``(C, ...)``; ``keep``
        (bool (C,)) limits the pool to those chains (a stuck chain's draws would swell it).
        """
        n, m2 = self.n, self.m2
        if pool:
            keep = torch.ones(self.mean.shape[0], dtype=torch.bool, device=m2.device) if keep is None else keep
            c = int(keep.sum())
            mean, m2_kept = self.mean[keep], m2[keep]
            dev = mean - mean.mean(0)
            between = dev.unsqueeze(-1) * dev.unsqueeze(-2) if m2.dim() == 3 else dev * dev
            m2 = (m2_kept + n * between).sum(0, keepdim=True).expand_as(m2)
            n = n * c
        cov = m2 / max(n - 1, 1)
        w = n / (n + 5.0)
        if cov.dim() == 3:
            eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
            return w * cov + 1e-3 * (5.0 / (n + 5.0)) * eye
        return w * cov + 1e-3 * (5.0 / (n + 5.0))


def stan_windows(warmup: int, init_buffer: int = 75, term_buffer: int = 50, base_window: int = 25) -> List[int]:
    """The warmup iterations (0-based) at which a slow mass-matrix window ends (Stan's schedule).

    Windows double in length between a fast initial buffer and a fast terminal buffer; when
    ``warmup`` is too short for the defaults it is split 15% / 75% / 10% as Stan does.
    """
    if warmup < 20:
        return []
    if init_buffer + base_window + term_buffer > warmup:
        init_buffer = int(0.15 * warmup)
        term_buffer = int(0.1 * warmup)
        base_window = warmup - init_buffer - term_buffer
    ends, start, size = [], init_buffer, base_window
    last = warmup - term_buffer
    while start < last:
        end = start + size
        if end + 2 * size > last:  # the next window would not fit: stretch this one to the end
            end = last
        ends.append(end - 1)
        start, size = end, 2 * size
    return ends
