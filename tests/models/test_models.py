"""Registered models: they run batched and unbatched alike, and their ground truths are right."""
from __future__ import annotations

import math

import pytest
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
import numpy as np
from scipy import integrate, special, stats

import ppl.models as models
from ppl.models import eight_schools, lgssm, logistic_regression, normal_normal

NAMES = sorted(models.list_models())
# models with their own tests (flat priors cannot be sampled; see test_posteriordb.py)
SAMPLEABLE = [n for n in NAMES if "posteriordb" not in models.get_model(n).tags and not n.startswith("pdb_")]
P = 7  # particles in the batched checks


def _sample_sites(trace):
    return {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}


def _max_plate_nesting(trace) -> int:
    k = 0
    for site in _sample_sites(trace).values():
        dims = [-f.dim for f in site["cond_indep_stack"]]
        k = max(k, len(site["fn"].batch_shape), max(dims, default=0))
    return k


def _batched(model, k: int):
    def run(**kwargs):
        with pyro.plate("_particles", P, dim=-(k + 1)):
            return model(**kwargs)

    return run


def test_registry_lists_every_model():
    assert set(NAMES) >= {
        "normal_normal", "normal_normal_vector", "eight_schools_centered", "eight_schools_noncentered",
        "logistic_regression", "logistic_regression_small", "lgssm", "lgssm_short",
    }
    for name, spec in models.list_models().items():
        assert spec.name == name and models.get_model(name) is spec
    with pytest.raises(KeyError, match="nope.*normal_normal"):
        models.get_model("nope")


@pytest.mark.parametrize("name", SAMPLEABLE)
def test_batched_log_density_matches_one_particle_at_a_time(name):
    spec = models.get_model(name)
    data = spec.data(seed=0)
    pyro.set_rng_seed(0)
    flat = poutine.trace(spec.model).get_trace(**data)
    k = _max_plate_nesting(flat)
    batched = poutine.trace(_batched(spec.model, k)).get_trace(**data)
    assert _sample_sites(batched).keys() == _sample_sites(flat).keys()

    per_particle = torch.zeros(P)
    for site in _sample_sites(batched).values():
        lp = site["fn"].log_prob(site["value"])
        assert lp.dim() == k + 1 and lp.shape[0] == P, (site["name"], lp.shape)
        per_particle += lp.reshape(P, -1).sum(-1)

    for i in range(P):
        one = poutine.trace(spec.model).get_trace(**data)
        for n, site in _sample_sites(one).items():
            if not site["is_observed"]:
                value = batched.nodes[n]["value"]
                event_dim = site["fn"].event_dim
                site["value"] = value.select(-(k + 1) - event_dim, i).reshape(site["value"].shape)
        replayed = poutine.trace(poutine.replay(spec.model, trace=one)).get_trace(**data)
        expected = replayed.log_prob_sum()
        if "constrained" not in spec.tags:  # a hard constraint may give a prior draw zero density
            assert torch.isfinite(expected)
        assert torch.allclose(per_particle[i].double(), expected.double(), rtol=1e-4, atol=1e-4), (i, per_particle[i], expected)


@pytest.mark.parametrize("name", SAMPLEABLE)
def test_data_is_seeded_and_truth_has_site_shapes(name):
    spec = models.get_model(name)
    a, b = spec.data(seed=0), spec.data(seed=0)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)
    if spec.ground_truth is None:
        return
    truth = spec.ground_truth(a)
    trace = poutine.trace(spec.model).get_trace(**a)
    for site_name, mean in truth.posterior_mean.items():
        assert mean.shape == trace.nodes[site_name]["value"].shape
        assert truth.posterior_sd[site_name].shape == mean.shape
        assert bool((truth.posterior_sd[site_name] > 0).all())


# ---------------------------------------------------------------- normal-normal


def _log_joint(y, sigma, mu0, tau0, mu):
    """log p(y | mu) + log p(mu), float64, scalar mu."""
    mu, sigma, mu0, tau0 = (torch.as_tensor(v, dtype=torch.float64) for v in (mu, sigma, mu0, tau0))
    return float(dist.Normal(mu, sigma).log_prob(y).sum() + dist.Normal(mu0, tau0).log_prob(mu))


def _f64(data):
    return {k: v.double() for k, v in data.items()}


def test_normal_normal_evidence_matches_quadrature():
    d = _f64(normal_normal.normal_normal_data(seed=3))
    truth = normal_normal.ground_truth(d)
    mean, sd = float(truth.posterior_mean["mu"]), float(truth.posterior_sd["mu"])
    c = _log_joint(d["y"], d["sigma"], d["mu0"], d["tau0"], mean)
    value, _ = integrate.quad(
        lambda m: math.exp(_log_joint(d["y"], d["sigma"], d["mu0"], d["tau0"], m) - c),
        mean - 30 * sd, mean + 30 * sd, epsabs=0, epsrel=1e-12, points=[mean],
    )
    assert abs(truth.log_evidence - (c + math.log(value))) < 1e-6


def test_normal_normal_posterior_is_conjugate_and_obeys_bayes_rule():
    d = _f64(normal_normal.normal_normal_data(seed=1))
    y, sigma, mu0, tau0 = d["y"], float(d["sigma"]), float(d["mu0"]), float(d["tau0"])
    truth = normal_normal.ground_truth(d)
    var = 1.0 / (1.0 / tau0**2 + len(y) / sigma**2)
    assert math.isclose(float(truth.posterior_mean["mu"]), var * (mu0 / tau0**2 + float(y.sum()) / sigma**2), rel_tol=1e-12)
    assert math.isclose(float(truth.posterior_sd["mu"]), math.sqrt(var), rel_tol=1e-12)
    post = dist.Normal(truth.posterior_mean["mu"], truth.posterior_sd["mu"])
    for mu in (-0.7, 1.3):
        log_post = float(post.log_prob(torch.tensor(mu, dtype=torch.float64)))
        assert math.isclose(truth.log_evidence, _log_joint(y, sigma, mu0, tau0, mu) - log_post, rel_tol=0, abs_tol=1e-9)


def test_normal_normal_vector_truth_matches_joint_gaussian():
    d = _f64(normal_normal.normal_normal_vector_data(seed=2))
    y, sigma, mu0, tau0 = d["y"], d["sigma"], d["mu0"], d["tau0"]
    n, dim = y.shape
    truth = normal_normal.vector_ground_truth(d)
    # vec(y) in row-major order: cov = I_n (x) diag(sigma^2) + 11^T (x) diag(tau0^2).
    cov = torch.kron(torch.eye(n, dtype=torch.float64), torch.diag(sigma**2)) + torch.kron(
        torch.ones(n, n, dtype=torch.float64), torch.diag(tau0**2)
    )
    joint = dist.MultivariateNormal(mu0.repeat(n), covariance_matrix=cov)
    assert math.isclose(truth.log_evidence, float(joint.log_prob(y.reshape(-1))), abs_tol=1e-8)
    post = dist.Normal(truth.posterior_mean["mu"], truth.posterior_sd["mu"]).to_event(1)
    prior = dist.Normal(mu0, tau0).to_event(1)
    for mu in (mu0 + 0.3, y.mean(0) - 0.2):
        bayes = dist.Normal(mu, sigma).to_event(1).log_prob(y).sum() + prior.log_prob(mu) - post.log_prob(mu)
        assert math.isclose(truth.log_evidence, float(bayes), abs_tol=1e-9)


# ---------------------------------------------------------------- eight schools


def test_eight_schools_reference_loads_and_is_shared():
    d = eight_schools.data()
    centered = eight_schools.centered_ground_truth(d)
    noncentered = eight_schools.noncentered_ground_truth(d)
    assert not centered.exact and not noncentered.exact
    for site in ("mu", "tau", "theta"):
        assert torch.equal(centered.posterior_mean[site], noncentered.posterior_mean[site])
        assert torch.equal(centered.posterior_sd[site], noncentered.posterior_sd[site])
    assert centered.posterior_mean["theta"].shape == (8,)
    assert noncentered.posterior_mean["theta_tilde"].shape == (8,)
    assert "theta_tilde" not in centered.posterior_mean
    assert math.isclose(float(centered.posterior_mean["mu"]), 4.4105183369549295)
    with pytest.raises(ValueError, match="standard data"):
        eight_schools.centered_ground_truth({"y": d["y"] + 1, "sigma": d["sigma"]})


def test_eight_schools_quadrature_agrees_with_posteriordb_draws():
    truth = eight_schools.noncentered_ground_truth(eight_schools.data())
    quad_mean, quad_sd = truth.extra["quadrature_mean"], truth.extra["quadrature_sd"]
    for site in ("mu", "tau", "theta"):
        ref_mean, ref_sd = truth.posterior_mean[site], truth.posterior_sd[site]
        # Monte Carlo error of 10,000 (autocorrelated) draws: allow 0.05 sd on means, 5% on sds.
        assert bool(((quad_mean[site] - ref_mean).abs() < 0.05 * ref_sd).all()), site
        assert bool(((quad_sd[site] - ref_sd).abs() < 0.05 * ref_sd).all()), site


def test_eight_schools_evidence_matches_2d_grid():
    """Independent check of the 1-D quadrature: a plain 2-D grid over (mu, log tau), in numpy."""
    d = eight_schools.data()
    y, sigma = d["y"].double().numpy(), d["sigma"].double().numpy()
    mu = np.linspace(-40.0, 50.0, 601)[:, None, None]
    log_tau = np.linspace(-20.0, 12.0, 801)[None, :, None]
    var = sigma**2 + np.exp(2 * log_tau)
    log_lik = (-0.5 * (np.log(2 * np.pi * var) + (y - mu) ** 2 / var)).sum(-1)
    log_prior_mu = stats.norm(0, 5).logpdf(mu[..., 0])
    log_prior_tau = stats.halfcauchy(scale=5).logpdf(np.exp(log_tau[..., 0])) + log_tau[..., 0]
    log_f = log_lik + log_prior_mu + log_prior_tau
    cell = (mu[1, 0, 0] - mu[0, 0, 0]) * (log_tau[0, 1, 0] - log_tau[0, 0, 0])
    log_z = special.logsumexp(log_f) + np.log(cell)
    truth = eight_schools.noncentered_ground_truth(d)
    assert abs(truth.log_evidence - log_z) < 1e-6
    # theta_tilde | mu, tau, y ~ Normal(w (y - mu) / tau, w sigma^2 / tau^2) with w = tau^2 / (tau^2 + sigma^2).
    weight = np.exp(log_f - log_f.max())[..., None]
    weight /= weight.sum()
    tau = np.exp(log_tau)
    shrink = tau**2 / var
    m, v = shrink * (y - mu) / tau, shrink * sigma**2 / tau**2
    mean = (weight * m).sum((0, 1))
    sd = np.sqrt((weight * (v + m**2)).sum((0, 1)) - mean**2)
    assert np.allclose(truth.posterior_mean["theta_tilde"].numpy(), mean, atol=1e-6)
    assert np.allclose(truth.posterior_sd["theta_tilde"].numpy(), sd, atol=1e-6)


# ---------------------------------------------------------------- LGSSM


def _lgssm_joint(T, a, q, r):
    """Covariance of (x, y) for T steps with the stationary initial law; x first, then y."""
    s0 = lgssm.stationary_sd(a, q)
    t = torch.arange(T, dtype=torch.float64)
    cov_x = s0**2 * a ** (t[:, None] - t[None, :]).abs()  # stationary AR(1)
    cov_y = cov_x + r**2 * torch.eye(T, dtype=torch.float64)
    return cov_x, cov_y


def test_kalman_matches_joint_gaussian():
    d = lgssm.short_data(seed=4)
    y = d["y"].double()
    a, q, r = 0.9, 1.0, 0.5
    T = y.shape[0]
    cov_x, cov_y = _lgssm_joint(T, a, q, r)
    log_z, fm, fv = lgssm.kalman_filter(y, a, q, r)
    assert abs(log_z - float(dist.MultivariateNormal(torch.zeros(T, dtype=torch.float64), cov_y).log_prob(y))) < 1e-8
    for t in range(T):  # filtering: condition x_t on y_0..t
        gain = torch.linalg.solve(cov_y[: t + 1, : t + 1], cov_x[t, : t + 1])
        assert math.isclose(float(fm[t]), float(gain @ y[: t + 1]), abs_tol=1e-10)
        assert math.isclose(float(fv[t]), float(cov_x[t, t] - gain @ cov_x[t, : t + 1]), abs_tol=1e-10)
    sm, sv = lgssm.kalman_smoother(y, a, q, r)
    gain = torch.linalg.solve(cov_y, cov_x).T  # E[x | y] = cov_xy cov_y^{-1} y, cov_xy = cov_x
    assert torch.allclose(sm, gain @ y, atol=1e-10)
    assert torch.allclose(sv, torch.diag(cov_x - gain @ cov_x), atol=1e-10)
    # The registered truth uses the data's parameters as the model sees them (float32 0-d tensors).
    truth = lgssm.ground_truth(d)
    log_z32, fm32, _ = lgssm.kalman_filter(y, d["a"], d["q"], d["r"])
    assert truth.log_evidence == log_z32 and torch.equal(truth.extra["filter_means"], fm32)
    assert abs(log_z32 - log_z) < 1e-5
    sm32, _ = lgssm.kalman_smoother(y, d["a"], d["q"], d["r"])
    assert torch.equal(torch.stack([truth.posterior_mean[f"x_{t}"] for t in range(T)]), sm32)


def test_lgssm_program_matches_step_form_and_kalman():
    d = lgssm.short_data(seed=5)
    params = {k: d[k] for k in ("a", "q", "r")}

    def stepped(y, a, q, r):
        state = lgssm.lgssm_init(a, q, r)
        for t in range(y.shape[0]):
            state = lgssm.lgssm_step(state, t, y[t], a, q, r)
        return state["x"]

    for run in (lambda m: m, lambda m: _batched(m, 0)):
        pyro.set_rng_seed(1)
        prog = poutine.trace(run(lgssm.lgssm)).get_trace(**d)
        steps = poutine.trace(poutine.replay(run(stepped), trace=prog)).get_trace(**d)
        assert list(_sample_sites(prog)) == list(_sample_sites(steps))
        prog.compute_log_prob()
        steps.compute_log_prob()
        for name in _sample_sites(prog):
            assert torch.allclose(prog.nodes[name]["log_prob"], steps.nodes[name]["log_prob"], atol=1e-6)

    # Bayes rule at one state path ties the program's density to the Kalman evidence.
    T = d["y"].shape[0]
    x = lgssm.kalman_smoother(d["y"], **params)[0]
    cov_x, cov_y = _lgssm_joint(T, 0.9, 1.0, 0.5)
    y = d["y"].double()
    gain = torch.linalg.solve(cov_y, cov_x).T
    post = dist.MultivariateNormal(gain @ y, covariance_matrix=cov_x - gain @ cov_x)
    cond = poutine.condition(lgssm.lgssm, data={f"x_{t}": x[t].float() for t in range(T)})
    log_joint = float(poutine.trace(cond).get_trace(**d).log_prob_sum())
    assert abs(log_joint - float(post.log_prob(x)) - lgssm.kalman_filter(d["y"], **params)[0]) < 1e-3


def test_lgssm_simulate_is_seeded_and_rejects_nonstationary_default():
    assert torch.equal(lgssm.simulate(T=5, seed=1)["y"], lgssm.simulate(T=5, seed=1)["y"])
    assert not torch.equal(lgssm.simulate(T=5, seed=1)["y"], lgssm.simulate(T=5, seed=2)["y"])
    with pytest.raises(ValueError, match="stationary"):
        lgssm.kalman_filter(torch.zeros(3), a=1.0)
    log_z, _, _ = lgssm.kalman_filter(torch.zeros(3), a=1.0, s0=2.0)
    assert math.isfinite(log_z)


# ---------------------------------------------------------------- logistic regression


def test_logistic_linear_predictor_shapes():
    d = logistic_regression.small_data()
    x = d["x"]
    w, b = torch.randn(3), torch.randn(())
    assert logistic_regression.linear_predictor(x, w, b).shape == (100,)
    wb, bb = torch.randn(P, 1, 3), torch.randn(P, 1)
    out = logistic_regression.linear_predictor(x, wb, bb)
    assert out.shape == (P, 100)
    assert torch.allclose(out[2], x @ wb[2, 0] + bb[2, 0], atol=1e-5)
    with pytest.raises(ValueError, match="size-1 slot"):
        logistic_regression.linear_predictor(x, torch.randn(P, 3), bb)


def test_logistic_data_is_informative_not_separable():
    d = logistic_regression.data()
    assert d["x"].shape == (1000, 25) and d["y"].shape == (1000,)
    assert set(d["y"].unique().tolist()) == {0.0, 1.0}
    assert 0.2 < float(d["y"].mean()) < 0.8


def test_logistic_subsampling_runs_batched():
    d = logistic_regression.small_data()
    trace = poutine.trace(_batched(logistic_regression.logistic_regression, 1)).get_trace(subsample_size=10, **d)
    assert trace.nodes["y"]["fn"].batch_shape == (P, 10)
