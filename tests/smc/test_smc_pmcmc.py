"""PMMH and particle Gibbs recover the posterior of the AR coefficient of a small LGSSM (exact by grid + Kalman)."""
import math

import pytest
import torch

from ppl.inference.smc import FKModel
from ppl.inference.smc.pmcmc import conditional_smc, particle_gibbs, pmmh
from ppl.models.lgssm import kalman_filter, simulate

Q, R, S0, PRIOR_SD = 1.0, 0.5, 1.0, 0.5
T = 30
C_R, C_Q = -math.log(R) - 0.5 * math.log(2 * math.pi), -math.log(Q) - 0.5 * math.log(2 * math.pi)



@pytest.fixture(scope="module")
def problem():
    y = simulate(T, seed=5, a=0.7, s0=S0)["y"].double()
    grid = torch.linspace(-0.99, 0.99, 397, dtype=torch.float64)
    logp = torch.tensor([kalman_filter(y, a=float(a), q=Q, r=R, s0=S0)[0] for a in grid]) + torch.distributions.Normal(
        0.0, PRIOR_SD).log_prob(grid)
    w = torch.softmax(logp, 0)
    mean = float((w * grid).sum())
    sd = float((w * (grid - mean) ** 2).sum().sqrt())
    return y, mean, sd


def make_fk(y):
    def build(theta):  # theta (n, 1): each particle's coefficient a
        a = theta[:, 0]

        def M0(n):
            return {"x": S0 * torch.randn(n, dtype=torch.float64)}

        def M(t, xp):
            return {"x": a * xp["x"] + Q * torch.randn_like(xp["x"])}

        def logG(t, xp, x):
            return C_R - 0.5 * ((y[t] - x["x"]) / R) ** 2

        def log_m(t, xp, x):
            return C_Q - 0.5 * ((x["x"] - a * xp["x"]) / Q) ** 2

        return FKModel(T, M0, M, logG, log_m)

    return build


def _check(draws, mean, sd):
    chain_means = draws.mean(1)
    se = float(chain_means.std()) / math.sqrt(draws.shape[0])  # between-chain (batch means) Monte Carlo error
    assert abs(float(draws.mean()) - mean) < 4 * se + 0.02 * sd, (float(draws.mean()), mean, se)
    assert abs(float(draws.std()) / sd - 1) < 0.3


@pytest.mark.parametrize("iterations", [80, pytest.param(400, marks=pytest.mark.slow)])
def test_pmmh_recovers_ar_coefficient(problem, iterations):
    y, mean, sd = problem
    out = pmmh(make_fk(y), lambda th: torch.distributions.Normal(0.0, PRIOR_SD).log_prob(th[:, 0]).where(th[:, 0].abs() < 1, torch.tensor(-math.inf, dtype=torch.float64)),
               torch.tensor([0.0], dtype=torch.float64), particles=50, chains=12, iterations=iterations, scale=0.2, seed=0)
    assert out["theta"].shape == (12, iterations, 1)
    assert 0.05 < float(out["acceptance"].mean()) < 0.8
    _check(out["theta"][:, iterations // 4:, 0], mean, sd)


@pytest.mark.parametrize("iterations", [50, pytest.param(300, marks=pytest.mark.slow)])
def test_particle_gibbs_recovers_ar_coefficient(problem, iterations):
    y, mean, sd = problem

    def sample_a(path, theta):  # conjugate Gaussian update of a given the path (x_0 law does not involve a)
        x = path["x"]
        prec = 1 / PRIOR_SD**2 + (x[:, :-1] ** 2).sum(1) / Q**2
        m = (x[:, :-1] * x[:, 1:]).sum(1) / Q**2 / prec
        return (m + prec.rsqrt() * torch.randn_like(m)).unsqueeze(-1)

    out = particle_gibbs(make_fk(y), sample_a, torch.tensor([0.0], dtype=torch.float64), particles=20, chains=12,
                         iterations=iterations, seed=0)
    _check(out["theta"][:, iterations // 4:, 0], mean, sd)


def test_conditional_smc_keeps_reference_without_ancestor_sampling(problem):
    y, _, _ = problem
    fk = make_fk(y)(torch.full((3 * 5, 1), 0.7, dtype=torch.float64))
    ref = [{"x": torch.full((3,), float(t), dtype=torch.float64)} for t in range(T)]
    torch.manual_seed(0)
    # with one particle per system the only path is the reference itself
    fk1 = make_fk(y)(torch.full((3, 1), 0.7, dtype=torch.float64))
    path = conditional_smc(fk1, 1, ref, systems=3, ancestor_sampling=False)
    assert all(torch.equal(p["x"], r["x"]) for p, r in zip(path, ref))
    path = conditional_smc(fk, 5, ref, systems=3)
    assert len(path) == T and path[0]["x"].shape == (3,)
