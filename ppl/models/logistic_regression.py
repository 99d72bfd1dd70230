"""Bayesian logistic regression on seeded synthetic data: a smooth, well-conditioned, non-conjugate posterior.

No ground truth is registered (``ground_truth=None``): the posterior has no closed form, and a long
reference run is too slow to compute at import or in the fast tests. Compare engines with each other,
or against a long NUTS run, instead.
"""
from __future__ import annotations

from typing import Dict, Optional

import pyro
import pyro.distributions as dist
import torch

from ppl.models.base import ModelSpec, register_model


def linear_predictor(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x @ w + b`` with shape ``batch + (n,)``, for ``w`` sampled outside the data plate.

    Unbatched, ``w`` is (d,) and ``b`` is (). Batched (a particle plate left of the data plate), ``w`` is
    ``batch + (1, d)`` and ``b`` is ``batch + (1,)``: the 1 is the data plate's slot, which the result
    fills with n. A matmul avoids the (batch, n, d) intermediate of ``(w * x).sum(-1)``.
    """
    if w.dim() == 1:
        return x @ w + b
    if w.shape[-2] != 1:
        raise ValueError(
            f"logistic_regression: batched 'w' must have shape batch + (1, d) (a size-1 slot for plate 'data'), "
            f"got {tuple(w.shape)}"
        )
    return (w @ x.transpose(-1, -2)).squeeze(-2) + b


def logistic_regression(
    x: torch.Tensor, y: Optional[torch.Tensor] = None, subsample_size: Optional[int] = None
) -> torch.Tensor:
    """w ~ Normal(0, I_d) (one event), b ~ Normal(0, 1), y_i ~ Bernoulli(logits = x_i . w + b) in plate 'data'.

    ``x`` is (n, d), ``y`` is (n,) of 0./1. (``None`` to sample it); ``subsample_size`` subsamples the plate.
    """
    n, d = x.shape
    w = pyro.sample("w", dist.Normal(x.new_zeros(d), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(x.new_tensor(0.0), 1.0))
    with pyro.plate("data", n, subsample_size=subsample_size) as idx:
        x_i = x if subsample_size is None else x[idx]
        y_i = y if (y is None or subsample_size is None) else y[idx]
        return pyro.sample("y", dist.Bernoulli(logits=linear_predictor(x_i, w, b)), obs=y_i)


def data(seed: int = 0, n: int = 1000, d: int = 25) -> Dict[str, torch.Tensor]:
    """Synthetic data: x ~ N(0, 1) iid (n, d); w_true ~ N(0, 4/d) so logits have sd about 2; b_true ~ N(0, 0.25)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w_true = 2.0 * torch.randn(d, generator=g) / d**0.5
    b_true = 0.5 * torch.randn((), generator=g)
    p = torch.sigmoid(x @ w_true + b_true)
    y = torch.bernoulli(p, generator=g)
    return {"x": x, "y": y}


def small_data(seed: int = 0, n: int = 100, d: int = 3) -> Dict[str, torch.Tensor]:
    """A small data set (n=100, d=3) for fast tests."""
    return data(seed=seed, n=n, d=d)


register_model(
    ModelSpec(
        name="logistic_regression",
        model=logistic_regression,
        data=data,
        description="Bayesian logistic regression, n=1000, d=25, standard normal priors; no ground truth.",
        ground_truth=None,
        tags=("glm", "continuous"),
    )
)

register_model(
    ModelSpec(
        name="logistic_regression_small",
        model=logistic_regression,
        data=small_data,
        description="Bayesian logistic regression, n=100, d=3, standard normal priors; no ground truth.",
        ground_truth=None,
        tags=("glm", "continuous", "small"),
    )
)
