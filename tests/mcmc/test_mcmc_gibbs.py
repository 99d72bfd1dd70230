"""Gibbs steps for finite discrete latents combined with NUTS: exact posteriors by enumeration.

Each model is conjugate given its discrete values, so the exact posterior is a finite sum over
the discrete assignments of Gaussian marginal likelihoods; estimates must lie within 4 Monte
Carlo standard errors (ArviZ bulk ESS) of it.
"""
import itertools
import math

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl.errors import DiscreteLatentError
from ppl.inference.mcmc import mcmc, nuts
from ppl.inference.program import Program
from ppl.inference.target import UnconstrainedTarget

Y = torch.tensor([0.3, -0.2, 0.8, 1.1])
LOCS = torch.tensor([-2.0, 0.0, 2.0])
CAT_P = torch.tensor([0.2, 0.5, 0.3])
Y_MIX = torch.tensor([0.1, 3.4, -0.5, 2.6, 1.2])


def bernoulli_switch(y):
    z = pyro.sample("z", dist.Bernoulli(0.3))
    mu = pyro.sample("mu", dist.Normal(2 * z - 1, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def categorical_switch(y):
    k = pyro.sample("k", dist.Categorical(CAT_P))
    mu = pyro.sample("mu", dist.Normal(LOCS[k], 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def shift_mixture(y):
    """y_i ~ N(mu + 3 z_i, 1), z_i ~ Bernoulli(0.3) in a plate, mu ~ N(0, 1)."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("y", dist.Normal(mu + 3.0 * z, 1.0), obs=y)


def poisson_latent(y):
    n = pyro.sample("n", dist.Poisson(3.0))
    mu = pyro.sample("mu", dist.Normal(n, 1.0))
    pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def only_discrete(y):
    z = pyro.sample("z", dist.Bernoulli(0.5))
    pyro.sample("y", dist.Normal(z, 1.0), obs=y)


# ------------------------------------------------------------------------------ exact answers
def normal_mean_posterior(r, m0, s0):
    """r_i = mu + N(0, 1), mu ~ N(m0, s0^2): (log marginal of r, posterior mean of mu)."""
    r = r.double()
    n = r.numel()
    cov = torch.eye(n, dtype=torch.float64) + s0 ** 2
    log_ml = torch.distributions.MultivariateNormal(torch.full((n,), float(m0), dtype=torch.float64), cov).log_prob(r)
    prec = 1 / s0 ** 2 + n
    return float(log_ml), float((m0 / s0 ** 2 + r.sum()) / prec)


def exact_mixture(log_prior, marginals):
    """Posterior probabilities of the discrete assignments and E[mu] from (log prior, (log ml, mean)) per assignment."""
    logw = torch.tensor([lp + ml for lp, (ml, _) in zip(log_prior, marginals)], dtype=torch.float64)
    w = torch.softmax(logw, 0)
    return w, float(sum(float(wi) * m for wi, (_, m) in zip(w, marginals)))


def check(draws: torch.Tensor, exact: float, name: str) -> None:
    x = draws.double().numpy()
    sd = x.std()
    ess = float(az.ess(x, method="bulk")) if sd > 0 else float(x.size)
    mcse = sd / math.sqrt(ess)
    assert ess > 50, f"{name}: ESS {ess:.0f} too small for a meaningful check"
    assert abs(x.mean() - exact) < 4 * mcse + 1e-12, f"{name}: {x.mean():.4f} vs exact {exact:.4f} (MCSE {mcse:.4f})"


RUN = dict(chains=32, warmup=100, draws=100, seed=1, progress=False)


# ----------------------------------------------------------------------------------- tests
def test_bernoulli_site_matches_exact_posterior():
    w, mu_mean = exact_mixture([math.log(0.7), math.log(0.3)], [normal_mean_posterior(Y, m, 1.0) for m in (-1.0, 1.0)])
    post = nuts(bernoulli_switch, Y, **RUN)
    assert post.samples["z"].shape == (32, 100)
    assert set(np.unique(post.samples["z"].numpy())) <= {0.0, 1.0}
    assert post.attrs["gibbs_sites"] == "z"
    check(post.samples["z"], float(w[1]), "P(z=1)")
    check(post.samples["mu"], mu_mean, "E[mu]")
    idata = post.to_arviz()
    assert "z" in idata.posterior and "lp" in idata.sample_stats


@pytest.mark.parametrize("kernel", ["nuts", "rwmh"])
def test_categorical_site_matches_exact_posterior(kernel):
    w, mu_mean = exact_mixture(CAT_P.log().tolist(), [normal_mean_posterior(Y, float(m), 1.0) for m in LOCS])
    post = mcmc(categorical_switch, Y, kernel=kernel, **RUN)
    k = post.samples["k"]
    assert k.dtype == torch.int64 and k.shape == (32, 100)
    for j in range(3):
        check((k == j).double(), float(w[j]), f"P(k={j})")
    check(post.samples["mu"], mu_mean, "E[mu]")


def test_plate_of_discrete_sites_matches_enumeration_of_all_assignments():
    assignments = list(itertools.product([0.0, 1.0], repeat=len(Y_MIX)))
    log_prior = [sum(math.log(0.3) if a else math.log(0.7) for a in za) for za in assignments]
    marginals = [normal_mean_posterior(Y_MIX - 3.0 * torch.tensor(za), 0.0, 1.0) for za in assignments]
    w, mu_mean = exact_mixture(log_prior, marginals)
    p_z = (w.unsqueeze(1) * torch.tensor(assignments, dtype=torch.float64)).sum(0)
    post = nuts(shift_mixture, Y_MIX, **RUN)
    assert post.samples["z"].shape == (32, 100, 5)
    assert post.dims["z"] == ("data",)
    for i in range(len(Y_MIX)):
        check(post.samples["z"][..., i], float(p_z[i]), f"P(z[{i}]=1)")
    check(post.samples["mu"], mu_mean, "E[mu]")
    assert post.log_likelihood["y"].shape == (32, 100, 5)


def test_init_gives_discrete_values_and_resume_keeps_them():
    init = {"z": torch.ones(5), "mu": torch.tensor(0.5)}
    post = nuts(shift_mixture, Y_MIX, chains=4, warmup=0, draws=1, init=init, seed=0, progress=False, compile=False)
    assert post.samples["z"].shape == (4, 1, 5)
    post2 = nuts(shift_mixture, Y_MIX, chains=4, warmup=0, draws=3, init=post, seed=0, progress=False, compile=False)
    assert post2.samples["z"].shape == (4, 3, 5)
    again = nuts(shift_mixture, Y_MIX, chains=4, warmup=0, draws=3, init=post, seed=0, progress=False, compile=False)
    assert torch.equal(again.samples["z"], post2.samples["z"]) and torch.equal(again.samples["mu"], post2.samples["mu"])
    with pytest.raises(ValueError, match="'z'.*support"):
        nuts(shift_mixture, Y_MIX, chains=4, warmup=0, draws=1, init={"z": torch.full((5,), 2.0)}, progress=False)


def test_infinite_support_and_all_discrete_are_clear_errors():
    with pytest.raises(DiscreteLatentError, match="'n'.*infinite support"):
        mcmc(poisson_latent, torch.tensor(1.0), kernel="hmc", chains=2, warmup=2, draws=2, progress=False)
    with pytest.raises(ValueError, match="every latent site.*discrete"):
        nuts(only_discrete, torch.tensor(1.0), chains=2, warmup=2, draws=2, progress=False)


def test_target_with_fixed_values_conditions_the_program():
    program = Program(bernoulli_switch, (Y,), None)
    with pytest.raises(DiscreteLatentError, match="'z'"):
        UnconstrainedTarget(program)
    with pytest.raises(ValueError, match="'z'.*batched"):  # batched shape: (N, 1) under the data plate
        UnconstrainedTarget(program, fixed={"z": torch.tensor([0.0, 1.0, 1.0])})
    fixed = {"z": program.sites["z"].to_batched(torch.tensor([0.0, 1.0, 1.0]))}
    target = UnconstrainedTarget(program, fixed=fixed)
    assert target.dim == 1 and [b.name for b in target.blocks] == ["mu"]
    mu = torch.tensor([[0.2], [-0.4], [1.0]])
    lp = target.log_prob(mu)
    z = torch.tensor([0.0, 1.0, 1.0])
    expected = (dist.Bernoulli(0.3).log_prob(z) + dist.Normal(2 * z - 1, 1.0).log_prob(mu[:, 0])
                + dist.Normal(mu, 1.0).log_prob(Y).sum(-1))
    assert torch.allclose(lp, expected, atol=1e-5)
    assert torch.equal(target.constrain(mu)["z"], z)
    with pytest.raises(KeyError, match="unknown"):
        UnconstrainedTarget(program, fixed={"nope": z})


def test_one_gibbs_scan_draws_from_the_exact_full_conditional():
    """Given mu the z_i are independent, so one scan from any start gives exactly p(z | mu, y)."""
    from ppl.inference.mcmc import DiscreteGibbs, discrete_sites
    from ppl.inference.runtime import seeded

    program = Program(shift_mixture, (Y_MIX,), None)
    gibbs = DiscreteGibbs(program, discrete_sites(program))
    c = 20000
    with seeded(0, None):
        target = UnconstrainedTarget(program, fixed=gibbs.initial_values(c, {"z": torch.ones(5)}))
        assert torch.equal(gibbs.named(target)["z"], torch.ones(c, 5))  # init values are used
        gibbs.step(target, torch.full((c, 1), 0.7))
    est = gibbs.named(target)["z"].double().mean(0)
    on = 0.3 * dist.Normal(0.7 + 3.0, 1.0).log_prob(Y_MIX).exp().double()
    off = 0.7 * dist.Normal(0.7, 1.0).log_prob(Y_MIX).exp().double()
    p = on / (on + off)
    assert torch.all((est - p).abs() < 4 * (p * (1 - p) / c).sqrt() + 1e-4), (est, p)
