"""The vi engine on conjugate models: exact KL, ELBO -> log Z, IWAE monotone in K, Result shape, composition."""
import math

import pytest
import torch

import ppl.inference.vi as V
from ppl.inference import Program, UnconstrainedTarget
from ppl.inference.importance import importance
from ppl.inference.registry import get_engine
from ppl.models import get_model



@pytest.fixture(scope="module")
def vector_fit():
    spec = get_model("normal_normal_vector")
    data = spec.data()
    result = V.vi(spec.model, model_kwargs=data, guide="fullrank", steps=250, particles=16, lr=0.05,
                  draws=2000, seed=0, schedule="cosine")
    return spec, data, result


def test_fullrank_recovers_exact_posterior(vector_fit):
    spec, data, result = vector_fit
    truth = spec.ground_truth(data)
    guide = result.fit.guide
    q = torch.distributions.MultivariateNormal(guide.loc.double(), scale_tril=guide.scale_tril().double())
    p = torch.distributions.MultivariateNormal(truth.posterior_mean["mu"], covariance_matrix=torch.diag(truth.posterior_sd["mu"] ** 2))
    kl = float(torch.distributions.kl_divergence(q, p).detach())
    assert kl < 0.01
    # ELBO = log Z - KL(q || p): within the Monte Carlo error of 2000 draws
    assert abs(result.attrs["elbo"] - (truth.log_evidence - kl)) < 4 * result.attrs["elbo_se"] + 1e-3
    assert result.attrs["elbo"] <= truth.log_evidence + 4 * result.attrs["elbo_se"]
    assert abs(result.log_evidence - truth.log_evidence) < 4 * result.log_evidence_se + 1e-3
    # EUBO from exact posterior draws: an upper bound, and EUBO - log Z = KL(p || q) is small too
    g = torch.Generator().manual_seed(3)
    exact = truth.posterior_mean["mu"] + truth.posterior_sd["mu"] * torch.randn(4000, 3, generator=g, dtype=torch.float64)
    up = V.eubo(guide, result.fit.target.log_prob, exact.float(), truth.log_evidence)
    assert up["eubo"] >= truth.log_evidence - 4 * up["eubo_se"]
    assert up["kl_pq"] < 0.01 + 4 * up["eubo_se"]


def test_result_layout_and_arviz(vector_fit):
    spec, data, result = vector_fit
    assert result.engine == "vi"
    assert result.samples["mu"].shape == (1, 2000, 3)
    assert result.log_likelihood["y"].shape == (1, 2000, 20)
    assert not result.weighted
    assert set(result.attrs) >= {"elbo", "iwae", "objective", "guide"}
    assert result.diagnostics["loss"].shape == (250,)
    assert result.attrs["iwae"] >= result.attrs["elbo"] - 4 * result.attrs["elbo_se"]
    idata = result.to_arviz()
    assert idata.posterior["mu"].sizes["draw"] == 2000


def test_engine_is_registered_with_cli_options():
    spec = get_engine("vi")
    for option in ("particles", "draws", "seed", "device", "guide", "objective", "steps"):
        assert spec.accepts(option)


def test_iwae_bound_increases_with_k():
    spec = get_model("normal_normal")
    data = spec.data()
    target = UnconstrainedTarget(Program(spec.model, (), data))
    truth = spec.ground_truth(data)
    guide = V.NormalGuide(1, init_loc=torch.tensor([2.4]), init_scale=1.0)  # deliberately too wide and off-centre
    torch.manual_seed(0)
    bounds = [V.iwae(guide, target.log_prob, k=k, n=1000) for k in (1, 10, 100)]
    for (lo, lo_se), (hi, hi_se) in zip(bounds, bounds[1:]):
        assert hi > lo + 4 * math.hypot(lo_se, hi_se)
    top, top_se = bounds[-1]
    assert top <= truth.log_evidence + 4 * top_se
    elbo, _ = V.elbo(guide, target.log_prob, n=2000)
    assert abs(elbo - bounds[0][0]) < 0.5  # IWAE with K=1 is the ELBO


def test_guide_as_importance_proposal_and_mcmc_init(vector_fit):
    spec, data, result = vector_fit
    target = result.fit.target
    truth = spec.ground_truth(data)
    pyro_guide = result.fit.guide.as_pyro_guide(target)
    post = importance(spec.model, particles=4000, guide=pyro_guide, seed=1, model_kwargs=data)
    assert post.ess > 0.9 * 4000  # a near-exact guide is a near-perfect proposal
    assert abs(post.log_evidence - truth.log_evidence) < 4 * post.log_evidence_se + 1e-3
    # importance's log q equals the guide's own density of the same points
    z = target.unconstrain_values({"mu": post.samples["mu"][0, :50]}, 50)
    lw_direct = target.log_prob(z) - result.fit.guide.log_prob(z)
    assert torch.allclose(post.log_weights[0, :50], lw_direct, atol=1e-3)
    init = result.fit.init_values(8)
    assert init["mu"].shape == (8, 3)
    assert torch.isfinite(target.unconstrain_values(init, 8)).all()


def test_positive_support_uses_jacobian():
    """A half-normal scale: the guide lives on log(scale); the pyro adapter reports log q in constrained space."""
    import pyro
    import pyro.distributions as dist

    def model(y):
        s = pyro.sample("s", dist.HalfNormal(2.0))
        with pyro.plate("n", y.shape[0]):
            pyro.sample("y", dist.Normal(0.0, s), obs=y)

    y = torch.randn(30) * 1.5
    res = V.vi(model, y, guide="normal", steps=200, particles=16, lr=0.05, draws=2000, seed=0)
    assert (res.samples["s"] > 0).all()
    post = importance(model, y, particles=4000, guide=res.fit.guide.as_pyro_guide(res.fit.target), seed=0)
    # exact evidence by quadrature over s
    s = torch.linspace(1e-3, 8, 20001, dtype=torch.float64)
    logj = dist.HalfNormal(2.0).log_prob(s) + dist.Normal(0.0, s.unsqueeze(-1)).log_prob(y.double()).sum(-1)
    log_z = float(torch.logsumexp(logj, 0) + math.log(float(s[1] - s[0])))
    assert abs(post.log_evidence - log_z) < 4 * post.log_evidence_se + 5e-3
    assert post.ess > 0.5 * 4000


def test_guide_initialises_mcmc_chains(vector_fit):
    mcmc = pytest.importorskip("ppl.inference.mcmc.driver")
    spec, data, result = vector_fit
    init = result.fit.init_values(4)
    post = mcmc.mcmc(spec.model, kernel="rwmh", chains=4, warmup=0, draws=5, init=init, seed=0,
                     progress=False, model_kwargs=data, adapt_step_size=False, adapt_mass=False)
    assert post.samples["mu"].shape == (4, 5, 3)
    # chains start inside the guide's (near exact) posterior, not at the default uniform init
    truth = spec.ground_truth(data)
    z = (post.samples["mu"][:, 0].double() - truth.posterior_mean["mu"]) / truth.posterior_sd["mu"]
    assert z.abs().max() < 6


@pytest.mark.parametrize("objective", ["iwae", "score", "vimco", "rws"])
def test_engine_objectives_reach_the_posterior(objective):
    spec = get_model("normal_normal")
    data = spec.data()
    truth = spec.ground_truth(data)
    res = V.vi(spec.model, model_kwargs=data, guide="normal", objective=objective, steps=150, particles=16,
               lr=0.1, draws=1000, seed=0)
    assert res.attrs["objective"] == objective
    # IWAE-type objectives widen q (its ELBO drops) while tightening the importance-weighted bound;
    # for every objective the self-normalised IS estimate from the guide's draws is on target
    if objective in ("iwae", "vimco"):
        assert abs(res.log_evidence - truth.log_evidence) < 4 * res.log_evidence_se + 0.02
    else:
        assert res.attrs["elbo"] > truth.log_evidence - 0.5
    lw = (res.sample_stats["lp"][0] - res.sample_stats["log_q"][0]).double()
    w = torch.softmax(lw, 0)
    mean = float((w * res.samples["mu"][0].double()).sum())
    assert abs(mean - float(truth.posterior_mean["mu"])) < 0.1
