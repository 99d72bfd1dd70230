"""posteriordb's linear regressions: earnings ~ height, kid score ~ mom IQ, log mesquite, diamonds.

Each follows the Stan model of the same name; coefficients without a prior in Stan get the
implicit flat prior (:func:`flat`). One plate, ``obs``, holds the observations.
"""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from ppl.models.posteriordb._util import flat, linear


def earn_height(earn: torch.Tensor, height: torch.Tensor) -> None:
    """earn ~ Normal(beta[0] + beta[1] height, sigma); beta and sigma > 0 flat (posteriordb earn_height)."""
    beta = pyro.sample("beta", flat(constraints.real, (2,)))
    sigma = pyro.sample("sigma", flat(constraints.positive))
    with pyro.plate("obs", earn.shape[-1]):
        pyro.sample("earn", dist.Normal(beta[..., 0] + beta[..., 1] * height, sigma), obs=earn)


def kidscore_momiq(kid_score: torch.Tensor, mom_iq: torch.Tensor) -> None:
    """kid_score ~ Normal(beta[0] + beta[1] mom_iq, sigma); beta flat, sigma ~ HalfCauchy(2.5)."""
    beta = pyro.sample("beta", flat(constraints.real, (2,)))
    sigma = pyro.sample("sigma", dist.HalfCauchy(kid_score.new_tensor(2.5)))
    with pyro.plate("obs", kid_score.shape[-1]):
        pyro.sample("kid_score", dist.Normal(beta[..., 0] + beta[..., 1] * mom_iq, sigma), obs=kid_score)


def logmesquite(
    weight: torch.Tensor,
    diam1: torch.Tensor,
    diam2: torch.Tensor,
    canopy_height: torch.Tensor,
    total_height: torch.Tensor,
    density: torch.Tensor,
    group: torch.Tensor,
) -> None:
    """log weight ~ Normal(X beta, sigma), X = [1, log diam1, log diam2, log canopy, log height, log density, group]."""
    X = torch.stack(
        [torch.ones_like(diam1), diam1.log(), diam2.log(), canopy_height.log(), total_height.log(), density.log(), group],
        dim=-1,
    )
    beta = pyro.sample("beta", flat(constraints.real, (7,)))
    sigma = pyro.sample("sigma", flat(constraints.positive))
    with pyro.plate("obs", weight.shape[-1]):
        pyro.sample("log_weight", dist.Normal(linear(X, beta), sigma), obs=weight.log())


def diamonds(Y: torch.Tensor, X: torch.Tensor) -> None:
    """brms regression of log price on 24 centred predictors: b ~ N(0, 1), Intercept ~ t3(8, 10), sigma ~ half-t3(0, 10).

    ``X`` is posteriordb's design matrix with its intercept column first; as in the brms code,
    the other columns are centred and ``Intercept`` is the intercept at the centred predictors.
    """
    Xc = X[..., 1:] - X[..., 1:].mean(-2, keepdim=True)
    b = pyro.sample("b", dist.Normal(Y.new_zeros(Xc.shape[-1]), 1.0).to_event(1))
    intercept = pyro.sample("Intercept", dist.StudentT(Y.new_tensor(3.0), Y.new_tensor(8.0), Y.new_tensor(10.0)))
    sigma = pyro.sample("sigma", dist.FoldedDistribution(dist.StudentT(Y.new_tensor(3.0), Y.new_tensor(0.0), Y.new_tensor(10.0))))
    with pyro.plate("obs", Y.shape[-1]):
        pyro.sample("Y", dist.Normal(intercept + linear(Xc, b), sigma), obs=Y)
