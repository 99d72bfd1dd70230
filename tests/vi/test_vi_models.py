"""The VI models' ground truths: closed forms checked independently (importance sampling, quadrature)."""
import math

import pytest
import torch

import ppl.models.vi_models as M
from ppl.inference.importance import importance
from ppl.models import get_model


def test_conjugate_gaussian_truth_matches_importance_sampling():
    spec = get_model("conjugate_gaussian")
    data = spec.data()
    truth = spec.ground_truth(data)
    post = importance(spec.model, particles=40_000, seed=0, model_kwargs=data)
    assert abs(post.log_evidence - truth.log_evidence) < 4 * post.log_evidence_se + 1e-3
    se = truth.posterior_sd["z"] / math.sqrt(post.ess)
    assert ((post.mean("z") - truth.posterior_mean["z"]).abs() < 5 * se).all()


def test_ppca_evidence_is_a_sum_of_marginal_gaussians():
    data = M.ppca_vae_data(n=30)
    truth = M._ppca_truth(data)
    cov = data["W"].double() @ data["W"].double().T + data["noise"] ** 2 * torch.eye(6, dtype=torch.float64)
    ref = torch.distributions.MultivariateNormal(data["b"].double(), covariance_matrix=cov).log_prob(data["x"].double()).sum()
    assert abs(truth.log_evidence - float(ref)) < 1e-4  # x - b is formed in float32
    assert truth.posterior_mean["z"].shape == (30, 2)


def test_two_moons_likelihood_is_normalised_and_matches_its_sampler():
    theta = torch.tensor([0.3, -0.4])
    d = M.TwoMoonsLikelihood(theta)
    u = torch.linspace(-1.5, 1.5, 1201, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    mass = torch.exp(M.TwoMoonsLikelihood(theta.double()).log_prob(grid)).sum() * (u[1] - u[0]) ** 2
    assert abs(float(mass) - 1.0) < 0.02
    torch.manual_seed(0)
    xs = d.sample((20_000,))
    w = torch.exp(M.TwoMoonsLikelihood(theta.double()).log_prob(grid))
    grid_mean = (w.unsqueeze(-1) * grid).sum(0) / w.sum()
    assert torch.allclose(xs.double().mean(0), grid_mean, atol=0.01)


@pytest.mark.parametrize("name", ["two_moons", "gaussian_linear", "slcp", "ppca_vae"])
def test_models_run_batched(name):
    from ppl.inference import Program

    spec = get_model(name)
    trace, density = Program(spec.model, (), spec.data()).run(5)
    assert density.log_joint.shape == (5,)
