"""posteriordb's eight schools (non-centred) and Poisson regression with a latent Gaussian process."""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

GP_JITTER = 1e-10  # Stan's diagonal jitter in gp_pois_regr


def eight_schools_noncentered(y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """theta = mu + tau * theta_trans, theta_trans ~ N(0, 1), mu ~ N(0, 5), tau ~ HalfCauchy(5), y ~ N(theta, sigma)."""
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(y.new_tensor(5.0)))
    with pyro.plate("school", y.shape[-1]):
        theta_trans = pyro.sample("theta_trans", dist.Normal(y.new_tensor(0.0), 1.0))
        theta = pyro.deterministic("theta", mu + tau * theta_trans)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)
    return theta


def exp_quad_cov(x: torch.Tensor, alpha: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Stan's gp_exp_quad_cov: alpha^2 exp(-(x_i - x_j)^2 / (2 rho^2)), batched over alpha / rho (..., 1, 1)."""
    d2 = (x.unsqueeze(-1) - x.unsqueeze(-2)) ** 2
    return alpha**2 * torch.exp(-0.5 * d2 / rho**2)


def _cholesky(cov: torch.Tensor) -> torch.Tensor:
    """Batched Cholesky that never raises mid-run and has no data-dependent branch (so it records as one graph).

    Matrices that fail (only for extreme alpha, far outside the posterior) get a relative jitter
    of 1e-9 times their largest diagonal entry; any still failing (alpha infinite or NaN after a
    wild leapfrog step) get a NaN factor, so the log density is NaN there and the engines reject
    the point, as Stan rejects a failed Cholesky, instead of the whole batch of chains raising.
    """
    L, info = torch.linalg.cholesky_ex(cov)
    failed = (info != 0)[..., None, None]
    scale = cov.diagonal(dim1=-2, dim2=-1).amax(-1).nan_to_num(nan=1.0, posinf=1.0).abs()[..., None, None] * 1e-9
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    L2, info2 = torch.linalg.cholesky_ex(cov + torch.where(failed, scale, torch.zeros_like(scale)) * eye)
    L = torch.where(failed, L2, L)
    return torch.where((info2 != 0)[..., None, None], torch.full_like(L, float("nan")), L)


def gp_pois_regr(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """k ~ Poisson(exp(f)), f = L f_tilde with L L^T = exp_quad_cov(x; alpha, rho) + 1e-10 I.

    rho ~ Gamma(25, 4), alpha ~ HalfNormal(2), f_tilde ~ N(0, 1). The Cholesky runs in float64
    (Stan's 1e-10 jitter is below float32 resolution), batched over particles.
    """
    n = x.shape[-1]
    rho = pyro.sample("rho", dist.Gamma(x.new_tensor(25.0), 4.0))
    alpha = pyro.sample("alpha", dist.HalfNormal(x.new_tensor(2.0)))
    with pyro.plate("obs", n):
        f_tilde = pyro.sample("f_tilde", dist.Normal(x.new_tensor(0.0), 1.0))
        # rho, alpha are () or (..., 1); make them (..., 1, 1) for the (n, n) kernel
        cov = exp_quad_cov(x.double(), alpha.double().unsqueeze(-1), rho.double().unsqueeze(-1))
        cov = cov + GP_JITTER * torch.eye(n, dtype=torch.float64, device=x.device)
        L = _cholesky(cov).to(f_tilde.dtype)  # (..., n, n)
        f = pyro.deterministic("f", (L @ f_tilde.unsqueeze(-1)).squeeze(-1))
        pyro.sample("k", dist.Poisson(f.exp()), obs=k)
    return f
