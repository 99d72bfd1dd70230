"""Continuous unnormalised targets for diffusion samplers, each with its exact log normaliser and exact sampler.

Targets are plain batched log densities ``log_prob(x: (n, D)) -> (n,)`` (not Pyro programs), defined
*unnormalised* so that the log Z a sampler estimates is a non-trivial known number:
25-component Gaussian mixture (2-D), Neal's funnel (10-D), many-well (32-D), and a Gaussian.
"""
from __future__ import annotations

import math
from typing import Optional

import torch


class ContinuousTarget:
    """An unnormalised log density on R^dim with its exact ``log_z`` and an exact ``sample``."""

    dim: int
    log_z: float
    name: str = "target"

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """grad_x log_prob(x), batched (n, dim) by autograd."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            return torch.autograd.grad(self.log_prob(x).sum(), x)[0]

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"{self.name}: x must have shape (n, {self.dim}), got {tuple(x.shape)}")


class Gaussian(ContinuousTarget):
    """log R(x) = -|x - mean|^2 / (2 sd^2) (no normaliser), so log Z = dim/2 log(2 pi sd^2)."""

    name = "gaussian"

    def __init__(self, dim: int = 1, mean: float = 0.0, sd: float = 1.0):
        self.dim, self.mean, self.sd = dim, float(mean), float(sd)
        self.log_z = 0.5 * dim * math.log(2 * math.pi * sd ** 2)

    def log_prob(self, x):
        self._check(x)
        return -0.5 * ((x - self.mean) / self.sd).pow(2).sum(-1)

    def sample(self, n, generator=None):
        return self.mean + self.sd * torch.randn(n, self.dim, generator=generator)


class GMM25(ContinuousTarget):
    """The standard 25-mode mixture: equal weights, means on {-10,-5,0,5,10}^2, unit covariance.

    Unnormalised as log R(x) = logsumexp_k(-|x - mu_k|^2 / 2), so Z = 25 * 2 pi and log Z = log(50 pi).
    """

    name = "gmm25"
    dim = 2

    def __init__(self, spacing: float = 5.0, sd: float = 1.0):
        g = torch.arange(-2, 3, dtype=torch.get_default_dtype()) * spacing
        self.means = torch.cartesian_prod(g, g)  # (25, 2)
        self.sd = float(sd)
        self.log_z = math.log(25 * 2 * math.pi * sd ** 2)

    def log_prob(self, x):
        self._check(x)
        m = self.means.to(x)
        d2 = (x.unsqueeze(-2) - m).pow(2).sum(-1)  # (n, 25)
        return torch.logsumexp(-0.5 * d2 / self.sd ** 2, -1)

    def nearest_mode(self, x: torch.Tensor) -> torch.Tensor:
        """Index (0..24) of the nearest mean of each row of x."""
        return torch.cdist(x, self.means.to(x)).argmin(-1)

    def sample(self, n, generator=None):
        k = torch.randint(0, 25, (n,), generator=generator)
        return self.means[k] + self.sd * torch.randn(n, 2, generator=generator)


class Funnel(ContinuousTarget):
    """Neal's funnel: x_0 ~ N(0, 3^2), x_i | x_0 ~ N(0, exp(x_0)) for i = 1..dim-1.

    Unnormalised by dropping the Gaussian constants: log R = -x_0^2/18 - (dim-1) x_0 / 2 - sum x_i^2 e^{-x_0} / 2,
    so log Z = log(3 sqrt(2 pi)) + (dim-1)/2 log(2 pi).
    """

    name = "funnel"

    def __init__(self, dim: int = 10, scale: float = 3.0):
        self.dim, self.scale = dim, float(scale)
        self.log_z = math.log(scale * math.sqrt(2 * math.pi)) + 0.5 * (dim - 1) * math.log(2 * math.pi)

    def log_prob(self, x):
        self._check(x)
        v, rest = x[:, 0], x[:, 1:]
        return -0.5 * v.pow(2) / self.scale ** 2 - 0.5 * (self.dim - 1) * v - 0.5 * rest.pow(2).sum(-1) * torch.exp(-v)

    def sample(self, n, generator=None):
        v = self.scale * torch.randn(n, 1, generator=generator)
        return torch.cat([v, torch.exp(0.5 * v) * torch.randn(n, self.dim - 1, generator=generator)], -1)


class ManyWell(ContinuousTarget):
    """Many-well: dim/2 independent copies of the double well log R(a, b) = -a^4 + 6 a^2 + a/2 - b^2/2.

    2^(dim/2) modes. log Z = (dim/2) * (log Z_a + log sqrt(2 pi)), Z_a = int exp(-a^4 + 6a^2 + a/2) da by
    quadrature on a fine grid (the integrand is negligible outside [-5, 5]); ``sample`` inverts the tabulated CDF.
    """

    name = "many_well"

    def __init__(self, dim: int = 32):
        if dim % 2:
            raise ValueError(f"many_well: dim must be even, got {dim}")
        self.dim = dim
        a = torch.linspace(-6.0, 6.0, 200001, dtype=torch.float64)
        la = self._log_a(a)
        da = float(a[1] - a[0])
        log_za = float(torch.logsumexp(la, 0) + math.log(da))  # Riemann sum, exact to many digits here
        self.log_z = 0.5 * dim * (log_za + 0.5 * math.log(2 * math.pi))
        w = torch.exp(la - la.max())
        cdf = torch.cumsum(w, 0)
        self._grid, self._cdf = a, cdf / cdf[-1]

    @staticmethod
    def _log_a(a):
        return -a.pow(4) + 6 * a.pow(2) + 0.5 * a

    def log_prob(self, x):
        self._check(x)
        a, b = x[:, 0::2], x[:, 1::2]
        return (self._log_a(a) - 0.5 * b.pow(2)).sum(-1)

    def sample(self, n, generator=None):
        k = self.dim // 2
        u = torch.rand(n * k, generator=generator, dtype=torch.float64)
        idx = torch.searchsorted(self._cdf, u).clamp(1, self._grid.numel() - 1)
        c0, c1 = self._cdf[idx - 1], self._cdf[idx]
        g0, g1 = self._grid[idx - 1], self._grid[idx]
        a = g0 + (u - c0) / (c1 - c0).clamp_min(1e-300) * (g1 - g0)
        b = torch.randn(n, k, generator=generator)
        x = torch.empty(n, self.dim)
        x[:, 0::2] = a.view(n, k).to(x.dtype)
        x[:, 1::2] = b
        return x


TARGETS = {"gmm25": GMM25, "funnel": Funnel, "many_well": ManyWell, "gaussian": Gaussian}


def get_target(name: str, **kwargs) -> ContinuousTarget:
    """A continuous target by name ("gmm25", "funnel", "many_well", "gaussian")."""
    if name not in TARGETS:
        raise KeyError(f"unknown continuous target {name!r}; choose from {sorted(TARGETS)}")
    return TARGETS[name](**kwargs)
