"""Bounds on log p(x) and calibration checks for trained guides.

``elbo`` and ``iwae`` are Monte Carlo lower bounds with standard errors; ``eubo`` is the upper
bound E_p[log p(x, z) - log q(z)] from exact posterior samples; ``sbc_ranks`` / ``coverage``
check an amortized guide's calibration on prior-predictive simulations.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import torch

from ppl.inference.vi.objectives import log_mean_exp


def _mean_se(x: torch.Tensor) -> Tuple[float, float]:
    x = x.double()
    return float(x.mean()), float(x.std() / math.sqrt(max(1, x.numel()))) if x.numel() > 1 else 0.0


@torch.no_grad()
def elbo(guide, log_p: Callable[[torch.Tensor], torch.Tensor], n: int = 1000) -> Tuple[float, float]:
    """ELBO = E_q[log p - log q] from ``n`` guide draws, with its standard error."""
    z, log_q = guide.sample(n)
    return _mean_se(log_p(z) - log_q)


@torch.no_grad()
def iwae(guide, log_p: Callable[[torch.Tensor], torch.Tensor], k: int = 100, n: int = 10) -> Tuple[float, float]:
    """IWAE bound with ``k`` importance samples, averaged over ``n`` independent replicates (with SE)."""
    z, log_q = guide.sample(k * n)
    lw = (log_p(z) - log_q).reshape(n, k)
    return _mean_se(log_mean_exp(lw, 1))


@torch.no_grad()
def eubo(guide, log_p: Callable[[torch.Tensor], torch.Tensor], posterior_z: torch.Tensor,
         log_evidence: Optional[float] = None) -> Dict[str, float]:
    """EUBO = E_{p(z|x)}[log p(x, z) - log q(z)] >= log p(x), from exact posterior draws ``posterior_z`` (N, D).

    With ``log_evidence`` also returns KL(p || q) = EUBO - log p(x) (the inclusive KL).
    """
    value, se = _mean_se(log_p(posterior_z) - guide.log_prob(posterior_z))
    out = {"eubo": value, "eubo_se": se}
    if log_evidence is not None:
        out["kl_pq"] = value - float(log_evidence)
    return out


@torch.no_grad()
def sbc_ranks(guide, simulate: Callable[[int], Tuple[torch.Tensor, torch.Tensor]], n_sims: int = 200,
              n_draws: int = 99) -> torch.Tensor:
    """Simulation-based calibration ranks of an amortized guide: (n_sims, D) integers in [0, n_draws].

    For each simulated (z*, x) from the prior predictive, the rank of each coordinate of z*
    among ``n_draws`` guide draws from q(. | x); a calibrated guide gives uniform ranks.
    """
    z_true, x = simulate(n_sims)
    z, _ = guide.sample(n_draws, x)  # (n_draws, n_sims, D)
    return (z < z_true.unsqueeze(0)).sum(0)


def sbc_uniformity_pvalue(ranks: torch.Tensor, n_draws: int, bins: int = 10) -> torch.Tensor:
    """Chi-square p-value per coordinate that the SBC ranks are uniform on {0..n_draws}."""
    ranks = ranks.detach().cpu()
    counts = torch.stack([torch.histc(ranks[:, j].double(), bins, 0, n_draws + 1) for j in range(ranks.shape[1])])
    expected = ranks.shape[0] / bins
    stat = ((counts - expected) ** 2 / expected).sum(1)
    dof = torch.tensor(float(bins - 1), dtype=torch.float64)
    return torch.special.gammaincc(dof / 2, stat / 2)  # chi-square survival function


@torch.no_grad()
def coverage(guide, simulate: Callable[[int], Tuple[torch.Tensor, torch.Tensor]], levels=(0.5, 0.8, 0.95),
             n_sims: int = 200, n_draws: int = 200) -> Dict[float, torch.Tensor]:
    """Empirical coverage of central credible intervals per coordinate: level -> (D,) fraction covering z*."""
    z_true, x = simulate(n_sims)
    z, _ = guide.sample(n_draws, x)
    out = {}
    for level in levels:
        lo = torch.quantile(z, (1 - level) / 2, dim=0)
        hi = torch.quantile(z, 1 - (1 - level) / 2, dim=0)
        out[level] = ((z_true >= lo) & (z_true <= hi)).double().mean(0)
    return out
