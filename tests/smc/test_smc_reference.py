"""Tempered SMC from a Gaussian reference fitted to draws: exact for any reference, and it opens flat-prior models.

Ground truth: conjugate Normal posteriors, with a proper prior (log evidence in closed form) and
with a flat prior on the mean and on a positive scale (the posterior in closed form).
"""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl.inference.smc import gaussian_reference, tempered_smc
from ppl.inference.vi import vi

Y = torch.tensor([1.3, 0.4, 2.1, 1.7, 0.9, 1.1, 1.6, 0.2], dtype=torch.float64)


def proper(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 2.0))
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def flat(y):
    mu = pyro.sample("mu", dist.ImproperUniform(dist.constraints.real, (), ()))
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def flat_scale(y):
    sigma = pyro.sample("sigma", dist.ImproperUniform(dist.constraints.positive, (), ()))
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("y", dist.Normal(torch.tensor(0.0, dtype=torch.float64), sigma), obs=y)


def _weighted(r, site):
    w = torch.softmax(r.log_weights[0].double(), -1)
    x = r.samples[site][0].double().reshape(-1)
    m = float((w * x).sum())
    return m, float((w * (x - m) ** 2).sum().sqrt())


def test_a_poor_reference_still_gives_the_exact_posterior_and_evidence():
    """Draws far off (mean +1.5, sd x3) make a poor reference; the path is exact regardless."""
    n = Y.shape[0]
    prec = 1 / 4 + n
    m_post, s_post = float(Y.sum()) / prec, prec ** -0.5
    cov = torch.eye(n, dtype=torch.float64) + 4.0
    log_z = float(dist.MultivariateNormal(torch.zeros(n, dtype=torch.float64), cov).log_prob(Y))
    off = {"mu": m_post + 1.5 + 3 * s_post * torch.randn(400, generator=torch.Generator().manual_seed(0), dtype=torch.float64)}
    ref = gaussian_reference(proper, off, Y, dtype=torch.float64)
    r = tempered_smc(proper, Y, particles=4000, reference=ref, seed=1, dtype=torch.float64)
    m, s = _weighted(r, "mu")
    assert abs(m - m_post) < 0.1 * s_post and abs(s / s_post - 1) < 0.06
    assert abs(r.log_evidence - log_z) < 4 * r.log_evidence_se + 0.02


@pytest.mark.parametrize("model,site", [(flat, "mu"), (flat_scale, "sigma")])
def test_flat_prior_models_temper_from_a_vi_reference(model, site):
    """Flat priors cannot be sampled: a mean-field VI fit gives the reference (VI itself runs on them)."""
    fit = vi(model, Y, guide="normal", steps=300, draws=500, seed=0, dtype=torch.float64)
    ref = gaussian_reference(model, fit, Y, dtype=torch.float64)
    r = tempered_smc(model, Y, particles=4000, reference=ref, seed=2, dtype=torch.float64)
    m, s = _weighted(r, site)
    n = Y.shape[0]
    if site == "mu":  # N(mean(y), 1/n)
        assert abs(m - float(Y.mean())) < 0.03 and abs(s * math.sqrt(n) - 1) < 0.06
    else:  # sigma^2 | y ~ Inv-Gamma((n-1)/2, sum y^2 / 2) under a flat prior on sigma
        a, b = (n - 1) / 2, float((Y**2).sum()) / 2
        samples = (1 / torch.distributions.Gamma(a, b).sample((400_000,)).double()).sqrt()
        assert abs(m - float(samples.mean())) < 0.03 * float(samples.mean())
        assert abs(s / float(samples.std()) - 1) < 0.08


def test_bad_input():
    with pytest.raises(ValueError, match="inflate"):
        gaussian_reference(proper, {"mu": torch.zeros(5)}, Y, inflate=0.0)
    with pytest.raises(KeyError, match="mu"):
        gaussian_reference(proper, {"nu": torch.zeros(5)}, Y)
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_reference(proper, {"mu": torch.zeros(1)}, Y)
