"""Bad input: guide/model site mismatch, wrong support, NaN loss (step named, last good parameters kept), driver features."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import ppl.inference.vi as V
from ppl.handlers.propose import GuideMismatchError


def model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    s = pyro.sample("s", dist.HalfNormal(1.0))
    with pyro.plate("n", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, s), obs=y)


Y = torch.tensor([0.3, -0.2, 1.1, 0.5])


@pytest.fixture(autouse=True)
def clean():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def guide_missing(y):
    pyro.sample("mu", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))


def guide_extra(y):
    pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.sample("s", dist.LogNormal(0.0, 1.0))
    pyro.sample("nu", dist.Normal(0.0, 1.0))


def guide_wrong_support(y):
    pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.sample("s", dist.Normal(0.0, 1.0))  # a positive site proposed on the real line


def test_guide_missing_a_model_site():
    with pytest.raises(GuideMismatchError, match="'s'"):
        V.vi(model, Y, guide=guide_missing, steps=2, particles=4, seed=0)


def test_guide_with_an_extra_site():
    with pytest.raises(GuideMismatchError, match="nu"):
        V.vi(model, Y, guide=guide_extra, steps=2, particles=4, seed=0)


def test_guide_with_wrong_support_names_the_site():
    with pytest.raises(V.GuideSupportError, match="'s'"):
        V.vi(model, Y, guide=guide_wrong_support, steps=2, particles=64, seed=0)


def test_unknown_guide_and_objective_names():
    with pytest.raises(ValueError, match="unknown guide"):
        V.vi(model, Y, guide="banana", steps=1)
    with pytest.raises(ValueError, match="unknown objective"):
        V.vi(model, Y, objective="banana", steps=1)
    with pytest.raises(ValueError, match="dim"):
        V.vi(model, Y, guide=V.NormalGuide(5), steps=1)


def test_nan_loss_stops_names_the_step_and_keeps_last_good_params():
    w = torch.nn.Parameter(torch.tensor([1.0]))

    def loss_fn(step, batch):
        return (w - 3.0).pow(2).sum() + (float("nan") if step == 7 else 0.0)

    with pytest.raises(V.NonFiniteLossError, match="step 7"):
        V.train(loss_fn, [w], steps=20, lr=0.1)
    # parameters are those at which step 6 had a finite loss (6 Adam updates from 1.0 with lr 0.1)
    assert abs(float(w.detach()) - 1.6) < 0.05 and math.isfinite(float(w.detach()))
    w2 = torch.nn.Parameter(torch.tensor([1.0]))

    def loss2(step, batch):
        return (w2 - 3.0).pow(2).sum() * (float("inf") if step == 3 else 1.0)

    hist = V.train(loss2, [w2], steps=20, lr=0.1, on_nonfinite="stop")
    assert hist.stopped == "nonfinite" and hist.nonfinite_step == 3 and len(hist.loss) == 3


def test_nan_in_model_density_surfaces_from_vi():
    def bad(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.factor("broken", mu * float("nan"))

    with pytest.raises(V.NonFiniteLossError, match="step 0"):
        V.vi(bad, Y, guide="normal", steps=5, particles=4, seed=0)


def test_checkpoint_resume_and_early_stopping(tmp_path):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(2))
    target = torch.tensor([1.0, -2.0])

    def loss_fn(step, batch):
        return (w - target).pow(2).sum()

    path = tmp_path / "ck.pt"
    V.train(loss_fn, [w], steps=50, lr=0.05, checkpoint=path, checkpoint_every=10)
    after50 = w.detach().clone()
    w2 = torch.nn.Parameter(torch.zeros(2))

    def loss2(step, batch):
        return (w2 - target).pow(2).sum()

    hist = V.train(loss2, [w2], steps=80, lr=0.05, checkpoint=path)  # resumes at step 50
    assert len(hist.loss) == 80
    w3 = torch.nn.Parameter(torch.zeros(2))

    def loss3(step, batch):
        return (w3 - target).pow(2).sum()

    V.train(loss3, [w3], steps=80, lr=0.05)
    assert torch.allclose(w2, w3, atol=1e-5) and not torch.allclose(after50, w3)
    # early stopping on a held-out bound that peaks then decays
    w4 = torch.nn.Parameter(torch.zeros(1))
    values = iter([1.0, 2.0, 3.0, 2.5, 2.0, 1.0, 0.0] + [0.0] * 100)
    hist = V.train(lambda s, b: (w4 - 1).pow(2).sum(), [w4], steps=1000, lr=0.01, eval_fn=lambda: next(values),
                   eval_every=10, patience=2)
    assert hist.stopped == "early_stopping" and hist.steps_done == 50


def test_minibatches_cover_the_data_plate():
    seen = []
    w = torch.nn.Parameter(torch.zeros(1))

    def loss_fn(step, batch):
        seen.append(batch)
        return w.pow(2).sum()

    V.train(loss_fn, [w], steps=5, data_size=10, batch_size=5, seed=0)
    assert sorted(torch.cat(seen[:2]).tolist()) == list(range(10))
    assert all(b.shape == (5,) for b in seen)
