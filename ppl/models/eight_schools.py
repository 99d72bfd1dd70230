"""Eight schools (Rubin 1981), centered and non-centered: the standard hierarchical-model benchmark.

Both parameterisations define the same posterior over (mu, tau, theta). The ground truth is
posteriordb's reference posterior (10,000 Stan draws) for mu, tau and theta; posteriordb does not
report ``theta_tilde`` (its ``theta_trans``) nor log p(y), so those come from :func:`quadrature_posterior`,
a one-dimensional quadrature over tau with mu and theta integrated analytically (accurate to ~1e-8).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Dict

import pyro
import pyro.distributions as dist
import torch

from ppl.models.base import GroundTruth, ModelSpec, register_model

Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)
MU_SCALE = 5.0  # mu ~ Normal(0, 5)
TAU_SCALE = 5.0  # tau ~ HalfCauchy(5)

# Reference posterior of posteriordb "eight_schools-eight_schools_noncentered" (stan-dev/posteriordb
# @28f8d3d6, 10 chains x 1000 draws, adapt_delta 0.95), copied from
# /work/shared/posteriordb/eight_schools-eight_schools_noncentered/reference.json; theta[1..8] there
# is theta[0..7] here. The posteriordb model is mu ~ normal(0, 5), tau ~ cauchy(0, 5) on tau > 0,
# theta_trans ~ normal(0, 1), theta = mu + tau * theta_trans, y ~ normal(theta, sigma): the model below.
REFERENCE_MEAN = {
    "mu": 4.4105183369549295,
    "tau": 3.6020595236405932,
    "theta": (
        6.150502293344254, 4.939581140742195, 3.9059060900158236, 4.79601675138494,
        3.6144363246798967, 4.051147578967499, 6.317169758868929, 4.883996943532884,
    ),
}
REFERENCE_SD = {
    "mu": 3.3092964767263533,
    "tau": 3.1984776709766325,
    "theta": (
        5.615863418889274, 4.645578113940842, 5.280711952216745, 4.770938024092453,
        4.614720692235884, 4.796248400609525, 5.002855395177529, 5.317692056077128,
    ),
}
REFERENCE_NUM_DRAWS = 10_000


def eight_schools_centered(y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """theta_j ~ Normal(mu, tau) directly (funnel-shaped posterior); y_j ~ Normal(theta_j, sigma_j)."""
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), y.new_tensor(MU_SCALE)))
    tau = pyro.sample("tau", dist.HalfCauchy(y.new_tensor(TAU_SCALE)))
    with pyro.plate("school", y.shape[-1]):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)
    return theta


def eight_schools_noncentered(y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """theta = mu + tau * theta_tilde with theta_tilde_j ~ Normal(0, 1); same posterior, easier geometry."""
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), y.new_tensor(MU_SCALE)))
    tau = pyro.sample("tau", dist.HalfCauchy(y.new_tensor(TAU_SCALE)))
    with pyro.plate("school", y.shape[-1]):
        theta_tilde = pyro.sample("theta_tilde", dist.Normal(y.new_tensor(0.0), y.new_tensor(1.0)))
        theta = pyro.deterministic("theta", mu + tau * theta_tilde)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)
    return theta


def data(seed: int = 0) -> Dict[str, torch.Tensor]:
    """The standard eight-schools data (``seed`` is accepted for the registry's signature and ignored)."""
    return {"y": torch.tensor(Y), "sigma": torch.tensor(SIGMA)}


def quadrature_posterior(y: torch.Tensor, sigma: torch.Tensor, num: int = 20001) -> Dict[str, Any]:
    """Posterior means/sds of mu, tau, theta, theta_tilde and log p(y), by quadrature over log tau (float64).

    Given tau, (mu, theta) are Gaussian given y, so their conditional moments are closed form; the
    marginal moments follow by the law of total variance on a uniform grid in log tau.
    """
    y = torch.as_tensor(y, dtype=torch.float64)
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    u = torch.linspace(-20.0, 12.0, num, dtype=torch.float64)  # log tau
    tau = u.exp().unsqueeze(-1)  # (G, 1)
    var_y = sigma**2 + tau**2  # marginal variance of y_j given mu, tau
    prec_mu = MU_SCALE**-2 + (1.0 / var_y).sum(-1)  # (G,)
    mean_mu = (y / var_y).sum(-1) / prec_mu
    sd_mu = prec_mu.rsqrt()
    # log p(y | tau) by Bayes' rule at mu = mean_mu.
    log_lik = (
        dist.Normal(mean_mu.unsqueeze(-1), var_y.sqrt()).log_prob(y).sum(-1)
        + dist.Normal(0.0, MU_SCALE).log_prob(mean_mu)
        - dist.Normal(mean_mu, sd_mu).log_prob(mean_mu)
    )
    log_joint = log_lik + dist.HalfCauchy(TAU_SCALE).log_prob(tau.squeeze(-1)) + u  # + log |dtau/du|
    du = float(u[1] - u[0])
    log_evidence = float(torch.logsumexp(log_joint, 0)) + math.log(du)
    weight = torch.softmax(log_joint, 0)

    shrink = tau**2 / var_y  # weight on y_j in E[theta_j | mu, tau, y]
    cond = {
        "mu": (mean_mu, sd_mu**2),
        "tau": (tau.squeeze(-1), torch.zeros_like(mean_mu)),
        "theta": (
            shrink * y + (1 - shrink) * mean_mu.unsqueeze(-1),
            shrink * sigma**2 + (1 - shrink) ** 2 / prec_mu.unsqueeze(-1),
        ),
        # theta_tilde = (theta - mu) / tau = shrink (y - mu) / tau + noise of variance sigma^2 / var_y.
        "theta_tilde": (
            (tau / var_y) * (y - mean_mu.unsqueeze(-1)),
            (tau / var_y) ** 2 / prec_mu.unsqueeze(-1) + sigma**2 / var_y,
        ),
    }
    mean, sd = {}, {}
    for name, (m, v) in cond.items():
        w = weight if m.dim() == 1 else weight.unsqueeze(-1)
        mean[name] = (w * m).sum(0)
        sd[name] = ((w * (v + m**2)).sum(0) - mean[name] ** 2).clamp_min(0).sqrt()
    return {"posterior_mean": mean, "posterior_sd": sd, "log_evidence": log_evidence}


def _is_standard(d: Dict[str, Any]) -> bool:
    """Whether ``d`` holds the standard data, the only data the reference numbers are for."""
    return all(
        torch.equal(torch.as_tensor(d[key]).double().cpu(), torch.tensor(value, dtype=torch.float64))
        for key, value in (("y", Y), ("sigma", SIGMA))
    )


@functools.lru_cache(maxsize=1)
def _standard_quadrature() -> Dict[str, Any]:
    return quadrature_posterior(torch.tensor(Y), torch.tensor(SIGMA))


def _truth(d: Dict[str, Any], sites: tuple) -> GroundTruth:
    if not _is_standard(d):
        raise ValueError("eight schools ground truth is only known for the standard data (eight_schools.data())")
    quad = _standard_quadrature()
    mean = {k: torch.tensor(v, dtype=torch.float64) for k, v in REFERENCE_MEAN.items()}
    sd = {k: torch.tensor(v, dtype=torch.float64) for k, v in REFERENCE_SD.items()}
    if "theta_tilde" in sites:
        mean["theta_tilde"] = quad["posterior_mean"]["theta_tilde"].clone()
        sd["theta_tilde"] = quad["posterior_sd"]["theta_tilde"].clone()
    return GroundTruth(
        posterior_mean=mean,
        posterior_sd=sd,
        log_evidence=quad["log_evidence"],
        exact=False,
        extra={
            "source": "posteriordb eight_schools-eight_schools_noncentered reference draws (mu, tau, theta); "
            "quadrature over tau (theta_tilde, log_evidence)",
            "reference_num_draws": REFERENCE_NUM_DRAWS,
            "quadrature_mean": {k: v.clone() for k, v in quad["posterior_mean"].items()},
            "quadrature_sd": {k: v.clone() for k, v in quad["posterior_sd"].items()},
        },
    )


def centered_ground_truth(d: Dict[str, Any]) -> GroundTruth:
    """Reference posterior of mu, tau, theta for the standard data (same as the non-centered model's)."""
    return _truth(d, ("mu", "tau", "theta"))


def noncentered_ground_truth(d: Dict[str, Any]) -> GroundTruth:
    """Reference posterior of mu, tau, theta, plus theta_tilde from quadrature, for the standard data."""
    return _truth(d, ("mu", "tau", "theta", "theta_tilde"))


register_model(
    ModelSpec(
        name="eight_schools_centered",
        model=eight_schools_centered,
        data=data,
        description="Eight schools, centered: theta ~ Normal(mu, tau) in plate 'school' (funnel geometry).",
        ground_truth=centered_ground_truth,
        tags=("hierarchical", "continuous", "reference", "funnel"),
    )
)

register_model(
    ModelSpec(
        name="eight_schools_noncentered",
        model=eight_schools_noncentered,
        data=data,
        description="Eight schools, non-centered: theta_tilde ~ Normal(0, 1), theta = mu + tau * theta_tilde.",
        ground_truth=noncentered_ground_truth,
        tags=("hierarchical", "continuous", "reference"),
    )
)
