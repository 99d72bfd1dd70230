"""Normal mean with a normal prior and known noise: the conjugate model with an exact posterior and evidence.

Two registered variants: ``normal_normal`` (a scalar mean ``mu``) and ``normal_normal_vector`` (a
D-dimensional mean with ``.to_event(1)``, to exercise event dimensions). The dimensions of the vector
variant are independent a priori and a posteriori, so its truth is the scalar formula per dimension.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple, Union

import pyro
import pyro.distributions as dist
import torch

from ppl.models.base import GroundTruth, ModelSpec, register_model

Scalar = Union[float, torch.Tensor]


def _like(value: Scalar, ref: torch.Tensor) -> torch.Tensor:
    """``value`` as a tensor with ``ref``'s dtype and device (hyperparameters follow the data)."""
    return torch.as_tensor(value, dtype=ref.dtype, device=ref.device)


def normal_normal(y: torch.Tensor, sigma: Scalar = 1.0, mu0: Scalar = 0.0, tau0: Scalar = 2.0) -> torch.Tensor:
    """mu ~ Normal(mu0, tau0); y_i ~ Normal(mu, sigma) for the N entries of ``y`` (shape (N,))."""
    sigma, mu0, tau0 = (_like(v, y) for v in (sigma, mu0, tau0))
    mu = pyro.sample("mu", dist.Normal(mu0, tau0))
    with pyro.plate("data", y.shape[-1]):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y)
    return mu


def normal_normal_vector(
    y: torch.Tensor, sigma: Scalar = 1.0, mu0: Scalar = 0.0, tau0: Scalar = 1.0
) -> torch.Tensor:
    """mu ~ Normal(mu0, tau0) over D dims (one event); y_i ~ Normal(mu, sigma) (event of D) for rows of ``y`` (N, D).

    ``sigma``, ``mu0`` and ``tau0`` are scalars or (D,) tensors.
    """
    d = y.shape[-1]
    sigma, mu0, tau0 = (_like(v, y) for v in (sigma, mu0, tau0))
    mu = pyro.sample("mu", dist.Normal(mu0, tau0).expand([d]).to_event(1))
    with pyro.plate("data", y.shape[-2]):
        pyro.sample("y", dist.Normal(mu, sigma).to_event(1), obs=y)
    return mu


def normal_normal_data(
    seed: int = 0, n: int = 20, sigma: float = 1.0, mu0: float = 0.0, tau0: float = 2.0
) -> Dict[str, torch.Tensor]:
    """Synthetic data for :func:`normal_normal`: mu drawn from the prior, then ``n`` noisy observations."""
    g = torch.Generator().manual_seed(seed)
    mu_true = mu0 + tau0 * torch.randn((), generator=g)
    y = mu_true + sigma * torch.randn(n, generator=g)
    return {"y": y, "sigma": torch.tensor(sigma), "mu0": torch.tensor(mu0), "tau0": torch.tensor(tau0)}


def normal_normal_vector_data(seed: int = 0, n: int = 20) -> Dict[str, torch.Tensor]:
    """Synthetic data for :func:`normal_normal_vector` with D=3 and different prior/noise scales per dimension."""
    g = torch.Generator().manual_seed(seed)
    mu0 = torch.tensor([0.0, 1.0, -1.0])
    tau0 = torch.tensor([1.0, 2.0, 0.5])
    sigma = torch.tensor([1.0, 0.5, 2.0])
    mu_true = mu0 + tau0 * torch.randn(3, generator=g)
    y = mu_true + sigma * torch.randn(n, 3, generator=g)
    return {"y": y, "sigma": sigma, "mu0": mu0, "tau0": tau0}


def conjugate_posterior(
    y: torch.Tensor, sigma: Scalar, mu0: Scalar, tau0: Scalar
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact posterior (mean, sd) of mu given ``y`` of shape (N,) or (N, D), in float64 (shape () or (D,))."""
    y = torch.as_tensor(y, dtype=torch.float64)
    sigma, mu0, tau0 = (torch.as_tensor(v, dtype=torch.float64) for v in (sigma, mu0, tau0))
    precision = tau0**-2 + y.shape[0] / sigma**2
    mean = (mu0 / tau0**2 + y.sum(0) / sigma**2) / precision
    return mean, precision.rsqrt().expand_as(mean).clone()


def log_evidence(y: torch.Tensor, sigma: Scalar, mu0: Scalar, tau0: Scalar) -> float:
    """Exact log p(y): y ~ MVN(mu0 1, sigma^2 I + tau0^2 11^T), summed over columns when ``y`` is (N, D)."""
    y = torch.as_tensor(y, dtype=torch.float64)
    cols = y.reshape(y.shape[0], -1).T  # (D, N)
    params = [torch.as_tensor(v, dtype=torch.float64).expand(cols.shape[0]) for v in (sigma, mu0, tau0)]
    n = cols.shape[1]
    total = 0.0
    for col, s, m, t in zip(cols, *params):
        cov = s**2 * torch.eye(n, dtype=torch.float64) + t**2 * torch.ones(n, n, dtype=torch.float64)
        total += float(dist.MultivariateNormal(m.expand(n), covariance_matrix=cov).log_prob(col))
    return total


def _ground_truth(data: Dict[str, Any]) -> GroundTruth:
    """Conjugate posterior and closed-form evidence for either variant's data."""
    args = (data["y"], data["sigma"], data["mu0"], data["tau0"])
    mean, sd = conjugate_posterior(*args)
    return GroundTruth(
        posterior_mean={"mu": mean}, posterior_sd={"mu": sd}, log_evidence=log_evidence(*args), exact=True
    )


def ground_truth(data: Dict[str, Any]) -> GroundTruth:
    """Exact truth for :func:`normal_normal` data."""
    return _ground_truth(data)


def vector_ground_truth(data: Dict[str, Any]) -> GroundTruth:
    """Exact truth for :func:`normal_normal_vector` data (mu has shape (D,))."""
    return _ground_truth(data)


register_model(
    ModelSpec(
        name="normal_normal",
        model=normal_normal,
        data=normal_normal_data,
        description="Normal mean, normal prior, known noise; 20 observations in plate 'data'.",
        ground_truth=ground_truth,
        tags=("conjugate", "continuous", "exact"),
    )
)

register_model(
    ModelSpec(
        name="normal_normal_vector",
        model=normal_normal_vector,
        data=normal_normal_vector_data,
        description="3-D normal mean (one event dim), normal prior, known noise; 20 rows in plate 'data'.",
        ground_truth=vector_ground_truth,
        tags=("conjugate", "continuous", "exact", "event_dims"),
    )
)
