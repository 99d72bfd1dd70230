"""Flat (ImproperUniform) priors: programs analyse, targets initialise Stan-style, prior sampling still fails."""
from __future__ import annotations

import pytest
import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from ppl.handlers.improper import IMPROPER_INIT, ImproperInitMessenger, cannot_sample
from ppl.inference.program import ModelError, Program
from ppl.inference.target import UnconstrainedTarget


def flat_model(y):
    loc = pyro.sample("loc", dist.ImproperUniform(constraints.real, (), (2,)))
    scale = pyro.sample("scale", dist.ImproperUniform(constraints.positive, (), ()))
    weight = pyro.sample("weight", dist.Beta(2.0, 2.0))
    share = pyro.sample("share", dist.ImproperUniform(constraints.interval(0.0, weight), (), ()))
    with pyro.plate("obs", y.shape[-1]):
        pyro.sample("y", dist.Normal(loc[..., 0] + share * loc[..., 1], scale), obs=y)


def test_cannot_sample_sees_through_wrappers():
    flat = dist.ImproperUniform(constraints.real, (), ())
    assert cannot_sample(flat) and cannot_sample(flat.expand([3]).to_event(1)) and cannot_sample(flat.mask(False))
    assert not cannot_sample(dist.Normal(0.0, 1.0).expand([3]).to_event(1))


def test_program_and_target_initialise_flat_sites_uniformly_in_unconstrained_space():
    program = Program(flat_model, kwargs={"y": torch.randn(6)})
    assert {k: tuple(s.shape) for k, s in program.latent_sites().items()} == {
        "loc": (2,), "scale": (), "weight": (), "share": ()}
    target = UnconstrainedTarget(program)
    pyro.set_rng_seed(0)
    z = target.sample_prior(4000)
    blocks = {b.name: z[:, b.start:b.stop] for b in target.blocks}
    for name in ("loc", "scale", "share"):  # Stan's init: Uniform(-2, 2) in unconstrained space
        u = blocks[name]
        assert u.min() >= -2 and u.max() <= 2
        assert abs(float(u.mean())) < 4 * (16 / 12) ** 0.5 / 4000**0.5  # 4 SE of the mean
    x = target.constrain(z)
    assert abs(float(x["weight"].mean()) - 0.5) < 4 * 0.05**0.5 / 4000**0.5  # a proper site: its Beta(2, 2) prior
    assert bool((x["share"] < x["weight"]).all()) and bool((x["scale"] > 0).all())
    assert torch.isfinite(target.log_prob(z)).all()
    # init values win over the fallback; the other flat sites still get Stan's init
    z0 = target.unconstrain_values({"scale": torch.tensor(2.0)}, 3)
    assert torch.allclose(target.constrain(z0)["scale"], torch.full((3,), 2.0))


def test_the_flag_marks_initialised_sites_and_prior_sampling_still_fails():
    program = Program(flat_model, kwargs={"y": torch.randn(6)})
    trace, _ = program.run(3, ImproperInitMessenger())
    assert trace.nodes["scale"]["infer"].get(IMPROPER_INIT) and not trace.nodes["weight"]["infer"].get(IMPROPER_INIT)
    with pytest.raises(ModelError, match="ImproperUniform does not support sampling"):
        program.run(3)  # a prior draw (importance sampling from the prior) is undefined for a flat prior
    with pytest.raises(ValueError, match="low < high"):
        ImproperInitMessenger(1.0, 1.0)
