"""Amortized guides: NPE and amortized ELBO on the conjugate Gaussian (exact KL on unseen x), set encoders, SBC."""
import pytest
import torch

import ppl.inference.vi as V
import ppl.models.vi_models  # noqa: F401  (registers the VI models)
from ppl.inference.vi.amortize import amortize
from ppl.models import get_model
from ppl.models.vi_models import gaussian_log_evidence, gaussian_posterior



def _exact_kl(guide, x, data):
    """KL(q(.|x) || p(.|x)) in closed form for a full-rank amortized guide, per observation."""
    d = guide.distribution(x)
    mean, cov = gaussian_posterior(x, data["A"], data["prior_scale"], data["noise"])
    p = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov.expand(x.shape[0], 2, 2))
    q = torch.distributions.MultivariateNormal(d.mean.double(), scale_tril=d.scale_tril.double())
    return torch.distributions.kl_divergence(q, p).detach()


@pytest.mark.parametrize("objective", ["npe", pytest.param("elbo", marks=pytest.mark.slow)])
def test_amortized_gap_on_unseen_observations(objective):
    spec = get_model("conjugate_gaussian")
    data = spec.data()
    fit = amortize(spec.model, model_kwargs=data, objective=objective, family="fullrank", steps=250,
                   batch_size=128, particles=4, lr=5e-3, seed=0, embed_dim=32)
    torch.manual_seed(1)
    _, x_new = fit.joint.simulate(200)  # unseen observations
    kl = _exact_kl(fit.guide, x_new, data)
    # an untrained (prior-like) guide is far off; the trained one is close on average
    assert kl.mean() < 0.1, f"mean KL {float(kl.mean()):.3f}"
    # the ELBO at one unseen x equals log p(x) - KL(q || p) within Monte Carlo error
    res = fit.posterior(x_new[0], draws=4000)
    log_z = float(gaussian_log_evidence(x_new[0], data["A"], data["prior_scale"], data["noise"]))
    lw_se = float((res.sample_stats["lp"] - res.sample_stats["log_q"]).std()) / 4000**0.5
    assert abs(res.attrs["elbo"] - (log_z - float(kl[0]))) < 4 * lw_se + 1e-3
    assert res.samples["z"].shape == (1, 4000, 2)


def test_sbc_ranks_are_uniform_for_npe():
    spec = get_model("gaussian_linear")
    data = spec.data(d=2)
    fit = amortize(spec.model, model_kwargs=data, objective="npe", family="normal", steps=250, batch_size=256,
                   lr=5e-3, seed=0, embed_dim=32)
    torch.manual_seed(2)
    ranks = V.sbc_ranks(fit.guide, fit.joint.simulate, n_sims=300, n_draws=49)
    assert ranks.shape == (300, 2)
    assert (V.sbc_uniformity_pvalue(ranks, 49) > 1e-3).all()
    cov = V.coverage(fit.guide, fit.joint.simulate, levels=(0.8,), n_sims=300, n_draws=200)[0.8]
    assert ((cov - 0.8).abs() < 4 * (0.8 * 0.2 / 300) ** 0.5 + 0.02).all()


def test_set_encoder_is_permutation_invariant():
    torch.manual_seed(0)
    enc = V.SetEncoder(elem_dim=2, out_dim=8)
    guide = V.AmortizedGuide(3, enc, 8, family="flow")
    x = torch.randn(5, 7, 2)
    perm = torch.randperm(7)
    z = torch.randn(4, 5, 3)
    assert torch.allclose(guide.log_prob(z, x), guide.log_prob(z, x[:, perm]), atol=1e-5)
    z2, log_q = guide.rsample(6, x)
    assert z2.shape == (6, 5, 3) and log_q.shape == (6, 5)
    assert torch.allclose(guide.log_prob(z2.detach(), x), log_q.detach(), atol=1e-4)
    with pytest.raises(ValueError, match="set encoder expects"):
        enc(torch.randn(5, 7, 3))


@pytest.mark.slow
def test_set_encoder_trains_on_a_plate_of_iid_points():
    """normal_normal's y is a set of 20 iid points: NPE with the Deep Sets encoder learns the posterior mean."""
    spec = get_model("normal_normal")
    data = spec.data()
    fit = amortize(spec.model, model_kwargs=data, objective="npe", encoder="set", steps=200, batch_size=128,
                   lr=5e-3, seed=0, embed_dim=32)
    truth = spec.ground_truth(data)
    res = fit.posterior(draws=2000)
    assert abs(float(res.mean("mu")) - float(truth.posterior_mean["mu"])) < 0.25
    assert abs(float(res.sd("mu")) - float(truth.posterior_sd["mu"])) < 0.1


def test_guide_options_shape_the_amortized_flow():
    import ppl.models.vi_models as M
    data = M.two_moons_data()
    fit = amortize(M.two_moons, model_kwargs=data, objective="npe", family="spline", steps=3, batch_size=16, seed=0,
                   guide_options={"bins": 12, "flows": 2, "hidden": [20, 20]})
    assert len(fit.guide.flows) == 2
    assert fit.guide.flows[0].nn.param_dims[0] == 12  # bin widths per dimension
    assert fit.guide.flows[0].nn.layers[0].out_features == 20
    with pytest.raises(TypeError):
        amortize(M.two_moons, model_kwargs=data, objective="npe", family="spline", steps=1, batch_size=4,
                 guide_options={"no_such_option": 1})
