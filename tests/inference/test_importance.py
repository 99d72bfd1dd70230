"""Importance sampling against exact log evidence and posteriors (conjugate models)."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl.errors import GuideMismatchError, ModelError
from ppl.inference import importance
from ppl.inference.importance import NonFiniteWeightError
from ppl.inference.resampling import ZeroWeightError
from ppl.models import get_model
from ppl.models.normal_normal import conjugate_posterior


@pytest.fixture(scope="module")
def normal_normal():
    spec = get_model("normal_normal")
    data = spec.data()
    return spec, data, spec.ground_truth(data)


def test_log_evidence_within_four_standard_errors(normal_normal):
    spec, data, truth = normal_normal
    result = importance(spec.model, model_kwargs=data, particles=200_000, seed=1)
    assert abs(result.log_evidence - truth.log_evidence) < 4 * result.log_evidence_se
    mean, sd = truth.posterior_mean["mu"], truth.posterior_sd["mu"]
    se_mean = float(sd) / math.sqrt(result.ess)
    assert abs(float(result.mean("mu")) - float(mean)) < 4 * se_mean
    assert abs(float(result.sd("mu")) / float(sd) - 1) < 4 / math.sqrt(2 * result.ess)


def test_reported_standard_error_matches_spread_over_seeds(normal_normal):
    spec, data, truth = normal_normal
    runs = [importance(spec.model, model_kwargs=data, particles=20_000, seed=s) for s in range(20)]
    estimates = torch.tensor([r.log_evidence for r in runs])
    reported = torch.tensor([r.log_evidence_se for r in runs]).mean()
    spread = estimates.std()
    assert 0.5 < float(reported / spread) < 2.0
    # and the estimates centre on the exact value (mean over 20 runs: se / sqrt(20))
    assert abs(float(estimates.mean()) - truth.log_evidence) < 4 * float(spread) / math.sqrt(20)


def test_exact_posterior_guide_gives_zero_variance_weights(normal_normal):
    spec, data, truth = normal_normal
    mean, sd = conjugate_posterior(data["y"], data["sigma"], data["mu0"], data["tau0"])

    def guide(y, sigma, mu0, tau0):
        pyro.sample("mu", dist.Normal(torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(sd, dtype=torch.float32)))

    result = importance(spec.model, guide=guide, model_kwargs=data, particles=1000, seed=0)
    assert result.ess > 990
    assert abs(result.log_evidence - truth.log_evidence) < 1e-3


def test_vector_model_and_chunks_agree(normal_normal):
    spec = get_model("normal_normal_vector")
    data = spec.data()
    truth = spec.ground_truth(data)
    result = importance(spec.model, model_kwargs=data, particles=100_000, chunk_size=30_000, seed=3)
    assert result.samples["mu"].shape == (1, 100_000, 3)
    assert abs(result.log_evidence - truth.log_evidence) < 4 * result.log_evidence_se


def test_seed_reproduces_and_does_not_touch_global_rng(normal_normal):
    spec, data, _ = normal_normal
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = importance(spec.model, model_kwargs=data, particles=100, seed=7)
    after = torch.rand(1)
    b = importance(spec.model, model_kwargs=data, particles=100, seed=7)
    assert torch.equal(a.samples["mu"], b.samples["mu"])
    assert torch.equal(before, after)


def test_bad_inputs_get_clear_errors():
    def nan_model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.factor("broken", torch.full_like(mu, float("nan")))

    with pytest.raises(NonFiniteWeightError, match="broken"):
        importance(nan_model, particles=10, seed=0)

    def impossible():
        mu = pyro.sample("mu", dist.Uniform(0.0, 1.0))
        pyro.sample("y", dist.Uniform(mu - 3, mu - 2), obs=torch.tensor(5.0))

    with pytest.raises(ZeroWeightError, match="all 10 particles"):
        importance(impossible, particles=10, seed=0)

    def observed_only():
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))

    with pytest.raises(ModelError, match="no latent sites"):
        importance(observed_only, particles=10)

    def model():
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    def wrong_guide():
        pyro.sample("nu", dist.Normal(0.0, 1.0))

    with pytest.raises(GuideMismatchError, match="mu"):
        importance(model, guide=wrong_guide, particles=10)
    with pytest.raises(ValueError, match="particles"):
        importance(model, particles=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_runs_on_cuda(normal_normal):
    spec, data, truth = normal_normal
    result = importance(spec.model, model_kwargs=data, particles=1_000_000, seed=0, device="cuda")
    assert result.samples["mu"].device.type == "cuda"
    assert abs(result.log_evidence - truth.log_evidence) < 4 * result.log_evidence_se
