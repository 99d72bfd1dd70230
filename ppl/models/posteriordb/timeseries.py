"""posteriordb's time series: an AR(K) model and a GARCH(1,1) volatility model."""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from ppl.models.posteriordb._util import flat, linear


def lag_matrix(y: torch.Tensor, K: int) -> torch.Tensor:
    """Rows t = K..T-1 holding (y[t-1], ..., y[t-K]): shape (T-K, K)."""
    if not 0 < K < y.shape[-1]:
        raise ValueError(f"arK needs 0 < K < len(y), got K={K} and len(y)={y.shape[-1]}")
    return y[:-1].unfold(0, K, 1).flip(-1)


def arK(y: torch.Tensor, K: int) -> None:
    """y[t] ~ Normal(alpha + sum_k beta[k] y[t-1-k], sigma) for t >= K; alpha, beta ~ N(0, 10), sigma ~ HalfCauchy(2.5).

    The autoregression is one matrix product with the (data-only) lag matrix: no loop over time.
    """
    K = int(K)
    lags = lag_matrix(y, K)  # (T-K, K)
    alpha = pyro.sample("alpha", dist.Normal(y.new_tensor(0.0), 10.0))
    beta = pyro.sample("beta", dist.Normal(y.new_zeros(K), 10.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfCauchy(y.new_tensor(2.5)))
    mean = alpha + linear(lags, beta)  # (T-K,) or (..., T-K)
    with pyro.plate("time", lags.shape[0]):
        pyro.sample("y", dist.Normal(mean, sigma), obs=y[K:])


def garch11(y: torch.Tensor, sigma1: float) -> None:
    """y[t] ~ Normal(mu, sigma[t]), sigma[t]^2 = alpha0 + alpha1 (y[t-1] - mu)^2 + beta1 sigma[t-1]^2, sigma[0] = sigma1.

    All four parameters have Stan's flat prior on their constraints (alpha0 > 0, 0 < alpha1 < 1,
    0 < beta1 < 1 - alpha1). The recursion loops over time, vectorised over particles.
    """
    mu = pyro.sample("mu", flat(constraints.real))
    alpha0 = pyro.sample("alpha0", flat(constraints.positive))
    alpha1 = pyro.sample("alpha1", flat(constraints.unit_interval))
    beta1 = pyro.sample("beta1", flat(constraints.interval(0.0, 1.0 - alpha1)))
    # parameters are () or batched (..., 1): give them a trailing time dim, (1,) or (..., 1, 1)
    m, a0, a1, b1 = (p.unsqueeze(-1) for p in (mu, alpha0, alpha1, beta1))
    shock = a0 + a1 * (y[:-1] - m) ** 2  # (T-1,) or (..., 1, T-1)
    var = torch.as_tensor(float(sigma1) ** 2, dtype=y.dtype, device=y.device) + torch.zeros_like(b1)
    variances = [var]
    for shock_t in shock.unbind(-1):  # unbind: one backward node (slicing per step is ~15x slower)
        var = shock_t.unsqueeze(-1) + b1 * var
        variances.append(var)
    sigma = torch.cat(variances, dim=-1).sqrt()  # (T,) or (..., 1, T)
    if mu.dim() > 0:
        sigma = sigma.squeeze(-2)
    with pyro.plate("time", y.shape[-1]):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y)
