"""Verified batching: models written for one run at a time get the right answer on a fallback path.

Each model here is written as Pyro users write them (no particle dimension in mind); the checks
are against exact answers, and the paths (vectorized, vmap, loop) are compared on the same points.
"""
import math
import warnings

import pytest
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

import ppl
from ppl.errors import ModelError
from ppl.handlers import FixMessenger
from ppl.inference.batching import BatchingWarning
from ppl.inference.mcmc import nuts
from ppl.inference.program import Program, forced_batching
from ppl.inference.smc import tempered_smc
from ppl.inference.target import UnconstrainedTarget


def indexed_regression():
    """w[0] and w[1] on a latent vector: a batched run broadcasts the particle dim into w's event."""
    w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    pyro.sample("y", dist.Normal(w[0] + 2 * w[1], 1.0), obs=torch.tensor(3.0))


def indexed_truth():
    a = torch.tensor([1.0, 2.0], dtype=torch.float64)
    cov = torch.eye(2, dtype=torch.float64) - torch.outer(a, a) / (1 + a @ a)
    return cov @ a * 3.0, cov.diagonal().sqrt()


def unplated_sum():
    """A latent with an un-plated batch dim that the model sums: max_plate_nesting is guessed as 1."""
    b = pyro.sample("b", dist.Normal(torch.zeros(3), 1.0))
    pyro.sample("obs", dist.Normal(b.sum(-1), 1.0), obs=torch.tensor(2.4))


def unsqueezed(y):
    """An unsqueeze(-1) that makes the batched log-prob gain a dimension (mixes particles)."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("d", 5):
        pyro.sample("y", dist.Normal(mu.unsqueeze(-1), 1.0), obs=y)


Y5 = torch.tensor([0.5, 1.0, 1.5, 0.2, 0.8])


def unsqueezed_log_z() -> float:
    cov = torch.eye(5, dtype=torch.float64) + 1.0
    return float(dist.MultivariateNormal(torch.zeros(5, dtype=torch.float64), cov).log_prob(Y5.double()))


def to_event_no_arg():
    """Pyro's ``.to_event()`` with no argument (all batch dims to event): under a particle plate it would
    swallow the particle dim too."""
    x = pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event())
    pyro.deterministic("s2", x.sum() ** 2)
    pyro.sample("obs", dist.Normal(x.sum(), 1.0), obs=torch.tensor(2.0))


def broadcasting(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("d", len(y)):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y)


def test_a_broadcasting_model_is_vectorized():
    program = Program(broadcasting, (Y5,))
    assert program.batching == "vectorized" and program.verdict.reason == ""


@pytest.mark.parametrize("model,args,site", [
    (indexed_regression, (), "w"), (unplated_sum, (), "obs"), (unsqueezed, (Y5,), "y"), (to_event_no_arg, (), None)])
def test_mis_broadcasting_models_are_caught_and_named(model, args, site):
    program = Program(model, args)
    assert program.batching == "vmap"
    if site is not None:
        assert repr(site) in program.verdict.reason


def _draws(result, name):
    return result.samples[name].reshape((-1,) + tuple(result.samples[name].shape[2:])).double()


def test_nuts_on_indexed_latent_matches_the_exact_posterior():
    mean, sd = indexed_truth()
    res = nuts(indexed_regression, chains=4, warmup=300, draws=500, seed=0, progress=False)
    assert res.attrs["batching"] == "vmap"
    w = _draws(res, "w")
    mcse = sd / math.sqrt(4 * 500 / 4)  # a conservative ESS of a quarter of the draws
    assert torch.all((w.mean(0) - mean).abs() < 4 * mcse), (w.mean(0), mean)
    assert torch.all((w.std(0) / sd - 1).abs() < 0.1)


def test_nuts_with_several_chains_does_not_leak_the_chain_dimension():
    # exact: s = sum(b) ~ N(0, 3), obs ~ N(s, 1) = 2.4 -> E[s | obs] = 1.8, each b_i has mean 0.6
    res = nuts(unplated_sum, chains=4, warmup=300, draws=500, seed=1, progress=False)
    b = _draws(res, "b")
    sd_b = math.sqrt(1 - 1 / 4)
    assert torch.all((b.mean(0) - 0.6).abs() < 4 * sd_b / math.sqrt(500)), b.mean(0)


def test_deterministic_with_to_event_no_arg():
    # s = x1 + x2 ~ N(0, 2); s | obs ~ N(4/3, 2/3); E[s^2] = 16/9 + 2/3
    res = nuts(to_event_no_arg, chains=4, warmup=300, draws=500, seed=0, progress=False)
    s2 = _draws(res, "s2")
    exact = 16 / 9 + 2 / 3
    assert abs(float(s2.mean()) - exact) < 4 * float(s2.std()) / math.sqrt(500), float(s2.mean())


def test_importance_on_a_particle_mixing_model_gets_the_exact_evidence():
    res = ppl.importance(unsqueezed, Y5, particles=4000, seed=0)
    assert res.attrs["batching"] == "vmap"  # simulation ran on the loop, density checks under vmap
    assert abs(res.log_evidence - unsqueezed_log_z()) < 4 * res.log_evidence_se + 1e-3


def test_the_check_matters_forcing_vectorized_on_a_mixing_model_is_wrong():
    """The check fails when batching is broken: forced onto the vectorized path, the density mixes particles."""
    mu = torch.tensor([[-1.0], [0.0], [2.0]])
    exact = dist.Normal(mu, 1.0).log_prob(Y5).sum(-1)
    _, auto = Program(unsqueezed, (Y5,)).run(3, FixMessenger({"mu": mu}))
    assert torch.allclose(auto.get("likelihood"), exact, atol=1e-5)
    with forced_batching("vectorized"):
        _, forced = Program(unsqueezed, (Y5,)).run(3, FixMessenger({"mu": mu}))
    assert not torch.allclose(forced.get("likelihood"), exact, atol=1.0)


@pytest.mark.parametrize("model,args", [(broadcasting, (Y5,)), (indexed_regression, ())])
def test_paths_agree_on_the_density_and_its_gradient(model, args):
    torch.manual_seed(0)
    paths = ("vectorized", "vmap", "loop") if model is broadcasting else ("vmap", "loop")
    targets = {}
    for mode in paths:
        with forced_batching(mode), warnings.catch_warnings():
            warnings.simplefilter("ignore", BatchingWarning)
            targets[mode] = UnconstrainedTarget(Program(model, args))
    z = torch.randn(5, targets[paths[0]].dim)
    ref_lp, ref_grad = targets[paths[0]].log_prob_and_grad(z)
    for mode in paths[1:]:
        lp, grad = targets[mode].log_prob_and_grad(z)
        assert torch.allclose(lp, ref_lp, atol=1e-5), mode
        assert torch.allclose(grad, ref_grad, atol=1e-5), mode
        named = targets[mode].constrain(z, observed=True)
        ref_named = targets[paths[0]].constrain(z, observed=True)
        for k, v in ref_named["__log_likelihood__"].items():
            assert torch.allclose(named["__log_likelihood__"][k], v, atol=1e-5), (mode, k)


def test_the_loop_path_warns_once_and_gives_the_same_posterior():
    mean, sd = indexed_truth()
    with forced_batching("loop"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = tempered_smc(indexed_regression, particles=400, seed=0)
    batching_warnings = [w for w in caught if issubclass(w.category, BatchingWarning)]
    assert len(batching_warnings) == 1 and "once per particle" in str(batching_warnings[0].message)
    assert res.attrs["batching"] == "loop"
    w = res.samples["w"][0].double()
    weights = torch.softmax(res.log_weights[0].double(), 0)
    post_mean = (weights[:, None] * w).sum(0)
    assert torch.all((post_mean - mean).abs() < 4 * sd / math.sqrt(res.ess)), post_mean
    log_z = float(dist.Normal(0.0, math.sqrt(6.0)).log_prob(torch.tensor(3.0)))
    assert abs(res.log_evidence - log_z) < 4 * res.log_evidence_se + 0.05


def test_observations_outside_their_support_are_refused_by_site_and_index():
    def model(y):
        lam = pyro.sample("lam", dist.Gamma(1.0, 1.0))
        with pyro.plate("d", len(y)):
            pyro.sample("y", dist.Exponential(lam), obs=y)

    with pytest.raises(ModelError, match=r"'y'.*index \(1,\)"):
        ppl.importance(model, torch.tensor([1.0, -2.0, 3.0]), particles=10, seed=0)
    with pytest.raises(ModelError, match="'y'"):
        nuts(model, torch.tensor([1.0, -2.0, 3.0]), chains=1, warmup=5, draws=5, seed=0, progress=False)


def test_masked_out_observations_are_not_checked():
    def model(y, m):
        lam = pyro.sample("lam", dist.Gamma(1.0, 1.0))
        with pyro.plate("d", len(y)), poutine.mask(mask=m):
            pyro.sample("y", dist.Exponential(lam), obs=y)

    res = ppl.importance(model, torch.tensor([1.0, -2.0, 3.0]), torch.tensor([True, False, True]), particles=10, seed=0)
    assert math.isfinite(res.log_evidence)


def _subsampled(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("d", len(y), subsample_size=5) as idx:
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])


@pytest.mark.parametrize("engine", ["nuts", "importance", "tempered"])
def test_subsampled_plates_are_refused_where_they_give_the_wrong_posterior(engine):
    y = torch.randn(50) + 3
    run = {"nuts": lambda: nuts(_subsampled, y, chains=1, warmup=5, draws=5, seed=0, progress=False),
           "importance": lambda: ppl.importance(_subsampled, y, particles=10, seed=0),
           "tempered": lambda: tempered_smc(_subsampled, y, particles=10, seed=0)}[engine]
    with pytest.raises(ModelError, match="subsamples 5 of 50"):
        run()


def _power_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def _power_log_z(scale: float) -> float:
    # integral of N(mu; 0, 1)^s N(1; mu, 1)^s dmu, in closed form
    s = scale
    return s * -math.log(2 * math.pi) + 0.5 * math.log(2 * math.pi / (2 * s)) - s * 0.25


@pytest.mark.parametrize("engine", ["importance", "tempered"])
def test_poutine_scale_on_latents_is_honoured_when_proposing_from_the_prior(engine):
    scaled = poutine.scale(_power_model, scale=2.0)
    y = torch.tensor(1.0)
    if engine == "importance":
        res = ppl.importance(scaled, y, particles=100_000, seed=0)
    else:
        res = tempered_smc(scaled, y, particles=2000, seed=0)
    assert abs(res.log_evidence - _power_log_z(2.0)) < 4 * res.log_evidence_se + 0.02, res.log_evidence


def test_pyro_param_in_a_model_is_a_constant_at_its_stored_value():
    pyro.clear_param_store()

    def model(y):
        s = pyro.param("s", torch.tensor(2.0), constraint=dist.constraints.positive)
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("d", len(y)):
            pyro.sample("y", dist.Normal(mu, s), obs=y)

    res = nuts(model, torch.ones(4), chains=2, warmup=200, draws=400, seed=0, progress=False)
    # prior precision 1 + 4 / s^2 = 2, mean = (4 / 4) / 2
    mu = _draws(res, "mu")
    assert abs(float(mu.mean()) - 0.5) < 4 * math.sqrt(0.5) / math.sqrt(400)
    pyro.clear_param_store()


def _hierarchical(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("g", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def _hierarchical_truth(y):
    """Exact posterior means and sds of (mu, theta) for the linear-Gaussian hierarchy above."""
    g = len(y)
    a = torch.cat([torch.ones(g, 1), torch.eye(g)], 1).double()  # theta = mu + e: x = (mu, e)
    lin = torch.cat([torch.tensor([[1.0] + [0.0] * g], dtype=torch.float64), a], 0)  # (mu, theta) = lin @ x
    # x ~ N(0, I) and y = a @ x + N(0, I): posterior precision I + a^T a
    post_cov = torch.linalg.inv(torch.eye(g + 1, dtype=torch.float64) + a.T @ a)
    post_mean = post_cov @ a.T @ y.double()
    mean, cov = lin @ post_mean, lin @ post_cov @ lin.T
    return mean, cov.diagonal().sqrt()


def test_poutine_reparam_loc_scale_is_honoured_and_the_original_site_reported():
    from pyro.infer.reparam import LocScaleReparam

    y = torch.tensor([1.5, -0.5, 2.0])
    model = poutine.reparam(_hierarchical, config={"theta": LocScaleReparam(0.0)})
    res = nuts(model, y, chains=4, warmup=300, draws=500, seed=0, progress=False)
    assert "theta" in res.samples and "theta" not in res.log_likelihood  # a deterministic site, not data
    mean, sd = _hierarchical_truth(y)
    est = torch.cat([_draws(res, "mu").mean(0, keepdim=True), _draws(res, "theta").mean(0)])
    assert torch.all((est - mean).abs() < 4 * sd / math.sqrt(500)), (est, mean)


def test_poutine_condition_on_a_latent_gives_the_conditional_posterior():
    y = torch.tensor([1.5, -0.5, 2.0])
    model = poutine.condition(_hierarchical, data={"mu": torch.tensor(1.0)})
    res = nuts(model, y, chains=4, warmup=300, draws=500, seed=0, progress=False)
    assert "mu" not in res.samples
    theta = _draws(res, "theta").mean(0)  # theta_i | mu=1, y_i ~ N((1 + y_i) / 2, 1/2)
    assert torch.all((theta - (1.0 + y.double()) / 2).abs() < 4 * math.sqrt(0.5) / math.sqrt(500)), theta


def test_a_handler_without_a_per_particle_form_refuses_the_fallback_rather_than_mix_particles():
    def guide():
        pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    with pytest.raises(ModelError, match="ProposeMessenger holds per-particle values"):
        ppl.importance(indexed_regression, guide=guide, particles=10, seed=0)
