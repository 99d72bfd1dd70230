"""The MCMC driver on Pyro programs: ground truth, ArviZ output, init / resume / interrupt, bad input."""
import math

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl.handlers.unconstrain import DiscreteLatentError
from ppl.inference import Program, Result, UnconstrainedTarget
from ppl.inference.mcmc import HMC, NUTS, InitError, Potential, mcmc, nuts
from ppl.inference.program import ModelError
from ppl.models import get_model

STATS = ("lp", "acceptance_rate", "step_size", "tree_depth", "n_steps", "diverging", "energy")


def normal_normal_posterior(y, sigma=1.0, mu0=0.0, tau0=2.0):
    prec = 1 / tau0**2 + len(y) / sigma**2
    return (mu0 / tau0**2 + float(y.sum()) / sigma**2) / prec, prec ** -0.5


@pytest.fixture(scope="module")
def normal_data():
    spec = get_model("normal_normal")
    return spec, spec.data(seed=0)


def test_conjugate_invariance_through_the_program(normal_data):
    """Chains started at exact posterior draws of normal_normal stay exact under NUTS on the program."""
    spec, data = normal_data
    m, s = normal_normal_posterior(torch.as_tensor(data["y"]), **{k: v for k, v in data.items() if k != "y"})
    torch.manual_seed(0)
    c = 2000
    start = {"mu": m + s * torch.randn(c)}
    post = mcmc(spec.model, model_kwargs=data, kernel="nuts", chains=c, warmup=0, draws=3, init=start,
                step_size=0.8 * s, adapt_step_size=False, adapt_mass=False, seed=1, progress=False,
                compile=False)
    mu = post.samples["mu"][:, -1].double()
    assert abs(float(mu.mean()) - m) < 4.5 * s / math.sqrt(c)
    assert abs(float(mu.var()) - s**2) < 4.5 * s**2 * math.sqrt(2 / c)
    assert float((post.samples["mu"][:, -1] != start["mu"]).float().mean()) > 0.5


@pytest.mark.parametrize("chains,warmup,draws,max_rhat", [
    (8, 150, 150, 1.02),
    pytest.param(4, 500, 1000, 1.01, marks=pytest.mark.slow),  # the default settings
])
def test_eight_schools_noncentered_matches_reference(chains, warmup, draws, max_rhat):
    spec = get_model("eight_schools_noncentered")
    data = spec.data()
    truth = spec.ground_truth(data)
    post = nuts(spec.model, model_kwargs=data, chains=chains, warmup=warmup, draws=draws, seed=0, progress=False)
    idata = post.to_arviz()
    rhat = az.rhat(idata, var_names=["mu", "tau", "theta"])
    assert max(float(rhat[k].max()) for k in ("mu", "tau", "theta")) < max_rhat
    for name in ("mu", "tau", "theta"):
        ess = az.ess(idata, var_names=[name])[name].values
        sd = truth.posterior_sd[name].numpy()
        mean = post.samples[name].double().mean((0, 1)).numpy()
        mcse_mean = sd / np.sqrt(ess)
        # the reference itself has Monte Carlo error (10,000 draws)
        ref_se = sd / np.sqrt(10_000)
        assert (np.abs(mean - truth.posterior_mean[name].numpy()) < 4 * np.sqrt(mcse_mean**2 + ref_se**2)).all(), name
        est_sd = post.samples[name].double().std((0, 1)).numpy()
        # MCSE of an sd via the ess of squared deviations is close to sd / sqrt(2 ess) (the posterior of tau is skewed: 2x)
        tol = 2.0 if name == "tau" else 1.0
        assert (np.abs(est_sd - sd) < 4 * tol * sd / np.sqrt(2 * ess) + 4 * sd / np.sqrt(2 * 10_000)).all(), name
    assert set(STATS) <= set(post.sample_stats)
    for k in STATS:
        assert post.sample_stats[k].shape == (chains, draws)
    assert np.isfinite(az.bfmi(idata)).all()
    assert "y" in post.log_likelihood and post.log_likelihood["y"].shape == (chains, draws, 8)
    assert 0 < post.attrs["lockstep_efficiency"] <= 1
    assert post.attrs["grad_evals_useful"] <= post.attrs["grad_evals_spent"]


@pytest.mark.parametrize("kernel,options", [("hmc", {"num_steps": 4}), ("mala", {}), ("rwmh", {}),
                                            ("chees", {}), ("elliptical_slice", {})])
def test_other_kernels_through_the_driver(normal_data, kernel, options):
    spec, data = normal_data
    m, s = normal_normal_posterior(torch.as_tensor(data["y"]), **{k: v for k, v in data.items() if k != "y"})
    post = mcmc(spec.model, model_kwargs=data, kernel=kernel, chains=32, warmup=150, draws=200, seed=3,
                progress=False, **options)
    mu = post.samples["mu"].double()
    ess = float(az.ess(post.to_arviz(), var_names=["mu"])["mu"])
    assert ess > 100
    assert abs(float(mu.mean()) - m) < 4 * s / math.sqrt(ess)
    assert abs(float(mu.std()) - s) < 4 * s / math.sqrt(2 * ess)
    # split R-hat - 1 is about 1 / (2 ess per half chain): < 1.03 holds when each half has ess > ~20
    assert az.rhat(post.to_arviz(), var_names=["mu"])["mu"] < 1.03
    if kernel == "chees":  # the trajectory length was adapted away from its start (1.0)
        assert post.attrs["trajectory_length"] != 1.0


def test_thin_seed_resume_and_stats(normal_data, tmp_path):
    spec, data = normal_data
    run = dict(model_kwargs=data, kernel="nuts", chains=3, warmup=30, draws=10, progress=False, compile=False)
    a = mcmc(spec.model, seed=7, thin=2, **run)
    b = mcmc(spec.model, seed=7, thin=2, **run)
    torch.testing.assert_close(a.samples["mu"], b.samples["mu"])
    assert a.samples["mu"].shape == (3, 10)
    assert {"runtime_s", "warmup_s", "sampling_s", "compile_s", "num_divergent", "lockstep_efficiency"} <= set(a.attrs)
    assert a.attrs["draws"] == 10 and a.attrs["thin"] == 2
    c = mcmc(spec.model, seed=8, init=a, **dict(run, warmup=0))
    path = tmp_path / "run.nc"
    a.save(path)  # the final state survives save / load, so a saved run can be continued
    d = mcmc(spec.model, seed=8, init=Result.load(path), **dict(run, warmup=0))
    torch.testing.assert_close(d.sample_stats["step_size"][:, 0], a.sample_stats["step_size"][:, -1])
    torch.testing.assert_close(c.sample_stats["step_size"][:, 0], a.sample_stats["step_size"][:, -1])
    assert c.attrs["interrupted"] == 0


def test_keyboard_interrupt_keeps_draws(normal_data):
    spec, data = normal_data

    class Interrupting(NUTS):
        count = 0

        def step(self, state):
            Interrupting.count += 1
            if Interrupting.count == 15:
                raise KeyboardInterrupt
            return super().step(state)

    post = mcmc(spec.model, model_kwargs=data, kernel=Interrupting, chains=2, warmup=5, draws=100,
                seed=0, progress=False, compile=False)
    assert post.attrs["interrupted"] == 1
    assert post.samples["mu"].shape == (2, 9)


def test_recorded_graph_matches_plain_path():
    spec = get_model("eight_schools_noncentered")
    target = UnconstrainedTarget(Program(spec.model, (), spec.data()))
    plain, fast = Potential(target, compile=False), Potential(target, compile="auto")
    torch.manual_seed(0)
    z = torch.randn(5, target.dim)
    beta = torch.rand(5)
    for got, want in zip(fast(z, beta), plain(z, beta)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert fast.compiled_for(z)
    lp, grad = target.log_prob_and_grad(z, beta)
    torch.testing.assert_close(fast(z, beta)[0], lp, rtol=1e-5, atol=1e-5)
    # a tempered view (as an SMC move uses it) drives a kernel through the fused leapfrog graph
    tempered = fast.tempered(beta)
    kernel = HMC(tempered, num_steps=3)
    state = kernel.init(z, step_size=torch.full((5,), 0.1))
    for _ in range(6):
        state, info = kernel.step(state)
    torch.testing.assert_close(state.lp, target.log_prob(state.z, beta), rtol=1e-4, atol=1e-4)
    assert any(k[0] == "leapfrog" and v is not None for k, v in fast._graphs.items())


# ------------------------------------------------------------------------------ bad input
def no_latents(y):
    pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)


def poisson_latent(y):
    n = pyro.sample("n", dist.Poisson(3.0))
    pyro.sample("y", dist.Normal(n, 1.0), obs=y)


def nan_at_init(y):
    s = pyro.sample("s", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(s, torch.sqrt(s - 10.0)), obs=y)  # sd is NaN unless s > 10


def positive_site(y):
    s = pyro.sample("s", dist.HalfNormal(1.0))
    pyro.sample("y", dist.Normal(0.0, s), obs=y)


def test_no_latents_is_an_error():
    with pytest.raises(ModelError, match="no latent"):
        nuts(no_latents, torch.tensor(1.0), chains=2, warmup=2, draws=2, progress=False)


def test_discrete_latent_with_infinite_support_under_hmc():
    with pytest.raises(DiscreteLatentError, match="'n'"):
        mcmc(poisson_latent, torch.tensor(1.0), kernel="hmc", chains=2, warmup=2, draws=2, progress=False)


def test_nan_log_density_at_init_names_the_site():
    with pytest.raises(InitError, match="'?y'?"):
        nuts(nan_at_init, torch.tensor(1.0), chains=2, warmup=2, draws=2, init={"s": torch.tensor(0.0)}, progress=False)


def test_impossible_init_value():
    with pytest.raises(ValueError, match="'s'.*support"):
        nuts(positive_site, torch.tensor(1.0), chains=2, warmup=2, draws=2, init={"s": torch.tensor(-1.0)}, progress=False)
    with pytest.raises(KeyError, match="unknown"):
        nuts(positive_site, torch.tensor(1.0), chains=2, warmup=2, draws=2, init={"t": torch.tensor(1.0)}, progress=False)


def test_bad_arguments():
    with pytest.raises(ValueError, match="chains"):
        nuts(positive_site, torch.tensor(1.0), chains=0, progress=False)
    with pytest.raises(ValueError, match="unknown kernel"):
        mcmc(positive_site, torch.tensor(1.0), kernel="gibbs", progress=False)


def test_engines_are_registered():
    import ppl.inference.mcmc  # noqa: F401
    from ppl.inference.registry import _ENGINES

    assert {"nuts", "hmc", "mala", "rwmh", "chees"} <= set(_ENGINES)
    assert _ENGINES["nuts"].accepts("chains") and _ENGINES["nuts"].accepts("warmup")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_nuts_on_cuda(normal_data):
    spec, data = normal_data
    post = nuts(spec.model, model_kwargs=data, chains=64, warmup=100, draws=100, seed=0, device="cuda", progress=False)
    assert post.samples["mu"].shape == (64, 100)
    m, s = normal_normal_posterior(torch.as_tensor(data["y"]), **{k: v for k, v in data.items() if k != "y"})
    assert abs(float(post.samples["mu"].double().mean()) - m) < 0.1 * s


def test_log_likelihood_can_be_skipped_and_lives_on_the_host():
    spec = get_model("eight_schools_noncentered")
    runs = [mcmc(spec.model, model_kwargs=spec.data(), chains=2, warmup=20, draws=10, seed=0, progress=False,
                 log_likelihood=flag) for flag in (True, False)]
    assert runs[0].log_likelihood["y"].shape == (2, 10, 8) and runs[0].log_likelihood["y"].device.type == "cpu"
    assert runs[1].log_likelihood == {}
    assert torch.equal(runs[0].samples["mu"], runs[1].samples["mu"])
    assert "log_likelihood" not in runs[1].to_arviz().groups()


def _check_normal_posterior(post, data):
    m, s = normal_normal_posterior(torch.as_tensor(data["y"]), **{k: v for k, v in data.items() if k != "y"})
    mu = post.samples["mu"].double()
    se = float(mu.std()) / math.sqrt(float(az.ess(post.to_arviz(), var_names=["mu"])["mu"]))
    assert abs(float(mu.mean()) - m) < 4 * se and abs(float(mu.std()) / s - 1) < 0.1


def test_auto_compile_switches_long_runs(normal_data, monkeypatch):
    """compile="auto" asks for inductor when sampling is predicted to outlast the threshold (here 0 s;
    the switch itself re-records with the traced backend to keep this test fast); short runs and
    explicit modes are left alone, and the draws stay right after the switch."""
    import ppl.inference.mcmc.driver as driver
    spec, data = normal_data
    short = mcmc(spec.model, model_kwargs=data, chains=4, warmup=40, draws=20, seed=0, progress=False)
    assert short.attrs["compile"] == "auto"
    asked = []
    original = Potential.recompile

    def recompile(self, mode):
        asked.append(mode)
        original(self, "trace")

    monkeypatch.setattr(Potential, "recompile", recompile)
    monkeypatch.setattr(driver, "AUTO_INDUCTOR_AFTER_S", 0.0)
    monkeypatch.setattr(driver, "_have_cxx", lambda: True)
    post = mcmc(spec.model, model_kwargs=data, chains=16, warmup=60, draws=150, seed=1, progress=False)
    assert asked == ["inductor"] and post.attrs["compile"] == "auto->inductor" and post.attrs["compiled"] == 1
    _check_normal_posterior(post, data)
    for mode in ("trace", False):
        kept = mcmc(spec.model, model_kwargs=data, chains=4, warmup=40, draws=20, seed=0, progress=False, compile=mode)
        assert kept.attrs["compile"] == str(mode) and len(asked) == 1


@pytest.mark.slow
def test_auto_compile_switch_to_inductor_for_real(normal_data, monkeypatch):
    import ppl.inference.mcmc.driver as driver
    if not driver._have_cxx():
        pytest.skip("no C++ compiler for inductor")
    spec, data = normal_data
    monkeypatch.setattr(driver, "AUTO_INDUCTOR_AFTER_S", 0.0)
    # MALA: one leapfrog graph to compile (NUTS has four); the switch does not depend on the kernel
    post = mcmc(spec.model, model_kwargs=data, kernel="mala", chains=64, warmup=100, draws=200, seed=1,
                progress=False)
    assert post.attrs["compile"] == "auto->inductor" and post.attrs["compiled"] == 1
    _check_normal_posterior(post, data)


def _quartic():
    x = pyro.sample("x", dist.Normal(0.0, 10.0))
    pyro.factor("well", -x**4 / 4)


def test_a_chain_stuck_in_a_stiff_region_is_restarted_during_warmup():
    """One chain starts where the curvature (3 x^2 = 2700) forbids the shared step size: every step
    diverges and it never moves. Pooled warmup restarts it from a moving chain's position; per-chain
    adaptation (Stan's way) is left to shrink its own step size."""
    init = torch.zeros(8, 1)
    init[3] = 30.0
    post = mcmc(_quartic, chains=8, warmup=150, draws=100, init=init, seed=0, progress=False)
    assert post.attrs["warmup_respawned_chains"] == 1
    x = post.samples["x"]
    assert float(x.abs().max()) < 4.0 and int(post.sample_stats["diverging"].sum()) < 10
    # the restart is a warmup device only: chains that all move are never touched
    fine = mcmc(_quartic, chains=8, warmup=150, draws=20, seed=0, progress=False)
    assert fine.attrs["warmup_respawned_chains"] == 0
    alone = mcmc(_quartic, chains=8, warmup=150, draws=20, init=init, seed=0, progress=False, pool_adaptation=False)
    assert alone.attrs["warmup_respawned_chains"] == 0
