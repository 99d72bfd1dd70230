"""Models for variational and amortized inference, each with an exact or reference answer.

``conjugate_gaussian``: z ~ N(m0, s0^2 I) in 2-D, x ~ N(A z, s^2 I) in 5-D; exact posterior for
every x (so the amortization gap is measurable exactly). ``ppca_vae``: a VAE-style model with a
2-D latent per data point and a linear decoder (probabilistic PCA), exact per-point posteriors and
evidence. SBI tasks as Pyro programs: ``two_moons`` (exact likelihood; reference posterior on a
grid), ``gaussian_linear`` (conjugate) and ``slcp`` (no closed form).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution

from ppl.models.base import GroundTruth, ModelSpec, register_model


# ------------------------------------------------------------------------- conjugate Gaussian
def _default_A() -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return torch.randn(5, 2, generator=g) / math.sqrt(2)


def conjugate_gaussian(x: torch.Tensor, A: torch.Tensor, prior_scale: float = 1.0, noise: float = 0.5) -> torch.Tensor:
    """z ~ N(0, prior_scale^2 I_d); x ~ N(A z, noise^2 I_m) with ``A`` of shape (m, d), ``x`` of shape (m,)."""
    d = A.shape[-1]
    z = pyro.sample("z", dist.Normal(torch.zeros(d, dtype=x.dtype, device=x.device), prior_scale).to_event(1))
    loc = (A * z.unsqueeze(-2)).sum(-1)
    pyro.sample("x", dist.Normal(loc, noise).to_event(1), obs=x)
    return z


def conjugate_gaussian_data(seed: int = 0) -> Dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    A = _default_A()
    z = torch.randn(2, generator=g)
    x = A @ z + 0.5 * torch.randn(5, generator=g)
    return {"x": x, "A": A, "prior_scale": 1.0, "noise": 0.5}


def gaussian_posterior(x: torch.Tensor, A: torch.Tensor, prior_scale: float, noise: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact posterior of the linear-Gaussian model for x of shape (..., m): mean (..., d), covariance (d, d)."""
    A = A.double()
    x = torch.as_tensor(x).double()
    precision = torch.eye(A.shape[1], dtype=torch.float64) / prior_scale**2 + A.T @ A / noise**2
    cov = torch.linalg.inv(precision)
    mean = (x @ A / noise**2) @ cov
    return mean, cov


def gaussian_log_evidence(x: torch.Tensor, A: torch.Tensor, prior_scale: float, noise: float) -> torch.Tensor:
    """log p(x) = log N(x; 0, s0^2 A A^T + s^2 I) for x of shape (..., m)."""
    A = A.double()
    m = A.shape[0]
    cov = prior_scale**2 * A @ A.T + noise**2 * torch.eye(m, dtype=torch.float64)
    return dist.MultivariateNormal(torch.zeros(m, dtype=torch.float64), covariance_matrix=cov).log_prob(torch.as_tensor(x).double())


def _conjugate_truth(data: Dict[str, Any]) -> GroundTruth:
    mean, cov = gaussian_posterior(data["x"], data["A"], data["prior_scale"], data["noise"])
    return GroundTruth(
        posterior_mean={"z": mean}, posterior_sd={"z": cov.diagonal().sqrt()},
        log_evidence=float(gaussian_log_evidence(data["x"], data["A"], data["prior_scale"], data["noise"])),
        exact=True, extra={"posterior_cov": {"z": cov}},
    )


# ------------------------------------------------------------------------- VAE-style (PPCA)
def ppca_vae(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, noise: float = 0.3) -> None:
    """Per data point: z_i ~ N(0, I_k); x_i ~ N(W z_i + b, noise^2 I_m); x of shape (n, m), W (m, k)."""
    k = W.shape[-1]
    with pyro.plate("points", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(k, dtype=x.dtype, device=x.device), 1.0).to_event(1))
        loc = (W * z.unsqueeze(-2)).sum(-1) + b
        pyro.sample("x", dist.Normal(loc, noise).to_event(1), obs=x)


def ppca_vae_data(seed: int = 0, n: int = 100, m: int = 6, k: int = 2) -> Dict[str, Any]:
    """Generated data: a fixed random decoder (W, b) and ``n`` points through it."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, k, generator=g)
    b = torch.randn(m, generator=g)
    z = torch.randn(n, k, generator=g)
    x = z @ W.T + b + 0.3 * torch.randn(n, m, generator=g)
    return {"x": x, "W": W, "b": b, "noise": 0.3}


def _ppca_truth(data: Dict[str, Any]) -> GroundTruth:
    mean, cov = gaussian_posterior(data["x"] - data["b"], data["W"], 1.0, data["noise"])
    log_z = gaussian_log_evidence(data["x"] - data["b"], data["W"], 1.0, data["noise"]).sum()
    return GroundTruth(posterior_mean={"z": mean}, posterior_sd={"z": cov.diagonal().sqrt().expand_as(mean)},
                       log_evidence=float(log_z), exact=True, extra={"posterior_cov": {"z": cov}})


# ------------------------------------------------------------------------- SBI: two moons
class TwoMoonsLikelihood(TorchDistribution):
    """The two-moons simulator's exact density: x = (r cos a + 0.25, r sin a) + shift(theta), a ~ U(-pi/2, pi/2), r ~ N(0.1, 0.01)."""

    arg_constraints = {}
    support = constraints.real_vector

    def __init__(self, theta: torch.Tensor, validate_args=None) -> None:
        self.theta = theta
        super().__init__(theta.shape[:-1], torch.Size([2]), validate_args=validate_args)

    def _center(self) -> torch.Tensor:
        t1, t2 = self.theta[..., 0], self.theta[..., 1]
        return torch.stack([-(t1 + t2).abs() / math.sqrt(2) + 0.25, (-t1 + t2) / math.sqrt(2)], -1)

    def sample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        a = (torch.rand(shape, dtype=self.theta.dtype, device=self.theta.device) - 0.5) * math.pi
        r = 0.1 + 0.01 * torch.randn(shape, dtype=self.theta.dtype, device=self.theta.device)
        return torch.stack([r * torch.cos(a), r * torch.sin(a)], -1) + self._center()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        p = value - self._center()
        r = p.norm(dim=-1).clamp_min(1e-12)
        log_r = dist.Normal(0.1, 0.01).log_prob(r)
        inside = p[..., 0] >= 0  # angle within (-pi/2, pi/2)
        out = log_r - math.log(math.pi) - torch.log(r)
        return torch.where(inside, out, torch.full_like(out, -1e4) + log_r)


def two_moons(x: torch.Tensor) -> torch.Tensor:
    """theta ~ U(-1, 1)^2; x | theta from the two-moons simulator (sbibm's task), exact likelihood."""
    theta = pyro.sample("theta", dist.Uniform(-torch.ones(2, dtype=x.dtype, device=x.device), 1.0).to_event(1))
    pyro.sample("x", TwoMoonsLikelihood(theta), obs=x)
    return theta


def two_moons_data(seed: int = 0) -> Dict[str, Any]:
    """sbibm's first observation uses theta = (0, 0) up to noise; here x from theta = (0.2, 0.3) with a seeded simulator."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.tensor([0.2, 0.3])
    a = (torch.rand((), generator=g) - 0.5) * math.pi
    r = 0.1 + 0.01 * torch.randn((), generator=g)
    d = TwoMoonsLikelihood(theta)
    x = torch.stack([r * torch.cos(a), r * torch.sin(a)]) + d._center()
    return {"x": x}


def two_moons_reference(x: torch.Tensor, n: int = 10_000, grid: int = 801, seed: int = 0) -> torch.Tensor:
    """Reference posterior draws (n, 2) for two moons: exact density on a fine grid, sampled with jitter."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linspace(-1, 1, grid, dtype=torch.float64)
    t = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    logp = TwoMoonsLikelihood(t).log_prob(torch.as_tensor(x).double())
    idx = torch.multinomial(torch.softmax(logp, 0), n, replacement=True, generator=g)
    h = 2.0 / (grid - 1)
    return (t[idx] + (torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * h).clamp(-1, 1).float()


# ------------------------------------------------------------------------- SBI: Gaussian linear
def gaussian_linear(x: torch.Tensor, scale: float = 0.1) -> torch.Tensor:
    """theta ~ N(0, 0.1 I_10); x ~ N(theta, 0.1 I_10) (sbibm's variances 0.1)."""
    d = x.shape[-1]
    theta = pyro.sample("theta", dist.Normal(torch.zeros(d, dtype=x.dtype, device=x.device), math.sqrt(scale)).to_event(1))
    pyro.sample("x", dist.Normal(theta, math.sqrt(scale)).to_event(1), obs=x)
    return theta


def gaussian_linear_data(seed: int = 0, d: int = 10) -> Dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    theta = math.sqrt(0.1) * torch.randn(d, generator=g)
    return {"x": theta + math.sqrt(0.1) * torch.randn(d, generator=g)}


def _gaussian_linear_truth(data: Dict[str, Any]) -> GroundTruth:
    x = torch.as_tensor(data["x"]).double()
    scale = data.get("scale", 0.1)
    d = x.shape[-1]
    log_z = dist.Normal(torch.zeros(d, dtype=torch.float64), math.sqrt(2 * scale)).log_prob(x).sum()
    return GroundTruth(posterior_mean={"theta": x / 2}, posterior_sd={"theta": torch.full((d,), math.sqrt(scale / 2), dtype=torch.float64)},
                       log_evidence=float(log_z), exact=True)


# ------------------------------------------------------------------------- SBI: SLCP
def slcp(x: torch.Tensor) -> torch.Tensor:
    """theta ~ U(-3, 3)^5; four 2-D points x_j ~ N(m(theta), S(theta)) with m = theta[:2], S from theta[2:]."""
    theta = pyro.sample("theta", dist.Uniform(-3 * torch.ones(5, dtype=x.dtype, device=x.device), 3.0).to_event(1))
    m = theta[..., :2]
    s1, s2 = theta[..., 2] ** 2, theta[..., 3] ** 2
    rho = torch.tanh(theta[..., 4])
    cov = torch.stack([torch.stack([s1**2, rho * s1 * s2], -1), torch.stack([rho * s1 * s2, s2**2], -1)], -2)
    cov = cov + 1e-6 * torch.eye(2, dtype=x.dtype, device=x.device)
    with pyro.plate("points", 4):
        pyro.sample("x", dist.MultivariateNormal(m, covariance_matrix=cov), obs=x)
    return theta


def slcp_data(seed: int = 0) -> Dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    theta = torch.tensor([0.7, -2.9, -1.0, -0.9, 0.6])
    s1, s2, rho = theta[2] ** 2, theta[3] ** 2, math.tanh(float(theta[4]))
    cov = torch.tensor([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]])
    L = torch.linalg.cholesky(cov)
    x = theta[:2] + torch.randn(4, 2, generator=g) @ L.T
    return {"x": x}


register_model(ModelSpec("conjugate_gaussian", conjugate_gaussian, conjugate_gaussian_data,
                         "2-D Gaussian latent, 5-D linear-Gaussian observation; exact posterior for every x.",
                         _conjugate_truth, ("conjugate", "continuous", "exact", "amortized")))
register_model(ModelSpec("ppca_vae", ppca_vae, ppca_vae_data,
                         "VAE-style local latents (2-D) with a linear decoder to 6-D, 100 generated points; exact.",
                         _ppca_truth, ("continuous", "exact", "local_latents")))
register_model(ModelSpec("two_moons", two_moons, two_moons_data,
                         "SBI two moons with its exact likelihood; reference posterior from a fine grid.",
                         None, ("sbi", "continuous", "multimodal")))
register_model(ModelSpec("gaussian_linear", gaussian_linear, gaussian_linear_data,
                         "SBI Gaussian linear task (10-D), conjugate: exact posterior.",
                         _gaussian_linear_truth, ("sbi", "conjugate", "continuous", "exact")))
register_model(ModelSpec("slcp", slcp, slcp_data,
                         "SBI simple likelihood, complex posterior (5 parameters, four 2-D points); no closed form.",
                         None, ("sbi", "continuous")))
