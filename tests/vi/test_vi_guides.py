"""Guides: log q of their own draws, shapes, the Pyro adapter on plates / event dims, devices."""
import pytest
import torch

import ppl.inference.vi as V
import ppl.models.vi_models  # noqa: F401
from ppl.inference import Program, UnconstrainedTarget
from ppl.inference.importance import importance
from ppl.models import get_model


@pytest.mark.parametrize("make", [
    lambda: V.NormalGuide(3), lambda: V.LowRankGuide(3, rank=2), lambda: V.FullRankGuide(3),
    lambda: V.FlowGuide(3, flows=2, kind="affine"), lambda: V.FlowGuide(3, flows=2, kind="spline"),
    lambda: V.FlowGuide(1, flows=1),
])
def test_log_prob_agrees_with_rsample(make):
    torch.manual_seed(0)
    guide = make()
    z, log_q = guide.rsample(50)
    assert z.shape == (50, guide.dim) and log_q.shape == (50,)
    assert torch.allclose(guide.log_prob(z.detach().clone()), log_q.detach(), atol=1e-4)
    log_q.sum().backward()  # differentiable in the parameters
    assert any(p.grad is not None for p in guide.parameters())


@pytest.mark.parametrize("family", ["normal", "fullrank", "flow", "spline"])
def test_amortized_families(family):
    torch.manual_seed(0)
    guide = V.AmortizedGuide(2, V.MLPEncoder(5, 8), 8, family=family)
    x = torch.randn(4, 5)
    z, log_q = guide.rsample(3, x)
    assert z.shape == (3, 4, 2) and log_q.shape == (3, 4)
    assert torch.allclose(guide.log_prob(z.detach(), x), log_q.detach(), atol=1e-4)
    one = guide.condition(x[1])
    z1, lq1 = one.sample(6)
    assert z1.shape == (6, 2)
    assert torch.allclose(one.log_prob(z1), lq1, atol=1e-4)


def test_pyro_adapter_on_a_plate_of_vector_latents():
    """ppca_vae: z is (100, 2) in plate 'points'; importance with the adapter weighs by target - guide density."""
    spec = get_model("ppca_vae")
    data = spec.data(n=10)
    target = UnconstrainedTarget(Program(spec.model, (), data))
    truth = spec.ground_truth(data)
    guide = V.NormalGuide(target.dim, init_loc=truth.posterior_mean["z"].reshape(-1), init_scale=0.12)
    post = importance(spec.model, particles=500, guide=guide.as_pyro_guide(target), seed=0, model_kwargs=data)
    z = target.unconstrain_values({"z": post.samples["z"][0]}, 500)
    assert torch.allclose(post.log_weights[0], target.log_prob(z) - guide.log_prob(z), atol=1e-3)
    assert abs(post.log_evidence - truth.log_evidence) < 4 * post.log_evidence_se + 0.05


def test_auto_guide_choice():
    spec = get_model("ppca_vae")
    target = UnconstrainedTarget(Program(spec.model, (), spec.data()))  # D = 200
    assert isinstance(V.auto_guide(target), V.LowRankGuide)
    small = UnconstrainedTarget(Program(get_model("normal_normal").model, (), get_model("normal_normal").data()))
    assert isinstance(V.auto_guide(small), V.FullRankGuide)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_vi_on_cuda():
    spec = get_model("normal_normal")
    res = V.vi(spec.model, model_kwargs=spec.data(), steps=50, particles=16, draws=100, seed=0, device="cuda")
    assert res.samples["mu"].device.type == "cuda"
