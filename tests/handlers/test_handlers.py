"""Each handler's one effect, and its composition with Pyro's own handlers."""
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.mcmc.util import initialize_model

from ppl.handlers import (
    DiscreteLatentError, GuideMismatchError, ProposeMessenger, ResampleMessenger,
    TemperMessenger, UnconstrainMessenger,
)
from ppl.handlers.unconstrain import UNCONSTRAINED
from ppl.inference.program import ModelError, Program


def nested(data):
    """Nested plates, a deterministic site, a factor and a mask."""
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("groups", 3, dim=-2):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("items", 4, dim=-1):
            pyro.deterministic("twice", 2 * loc)
            mask = torch.tensor([True, True, False, True])
            pyro.sample("y", dist.Normal(loc, scale).mask(mask), obs=data)
    pyro.factor("penalty", -0.5 * scale**2)


DATA = torch.arange(12.0).reshape(3, 4) / 10


def test_batch_adds_a_leading_particle_dimension_to_every_site():
    program = Program(nested, (DATA,))
    assert program.max_plate_nesting == 2
    trace, density = program.run(6)
    assert trace.nodes["scale"]["value"].shape == (6, 1, 1)
    assert trace.nodes["loc"]["value"].shape == (6, 3, 1)
    assert trace.nodes["twice"]["value"].shape == (6, 3, 1)
    assert density.log_joint.shape == (6,)
    sites = program.sites
    assert sites["loc"].shape == (3,) and sites["loc"].dims == ("groups",)
    assert sites["y"].shape == (3, 4) and sites["y"].dims == ("groups", "items")
    assert sites["penalty"].kind == "factor" and sites["twice"].kind == "deterministic"
    named = program.named_values(trace)
    assert named["scale"].shape == (6,) and named["loc"].shape == (6, 3) and named["twice"].shape == (6, 3, 4)
    loglik = program.pointwise_log_likelihood(trace)["y"]
    assert loglik.shape == (6, 3, 4) and torch.all(loglik[:, :, 2] == 0)  # masked out


def test_batched_mask_and_factor_match_one_particle_runs():
    program = Program(nested, (DATA,))
    trace, density = program.run(3)
    for i in range(3):
        values = {"scale": trace.nodes["scale"]["value"][i].squeeze(), "loc": trace.nodes["loc"]["value"][i]}
        single = poutine.trace(poutine.condition(nested, data=values)).get_trace(DATA)
        assert torch.allclose(density.log_joint[i], single.log_prob_sum(), atol=1e-5)


def test_subsampled_plate_is_scaled_like_pyro():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 100, subsample_size=10) as idx:
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x[idx])

    x = torch.randn(100)
    torch.manual_seed(0)
    trace, density = Program(model, (x,)).run(5)
    idx = trace.nodes["data"]["value"]
    mu = trace.nodes["mu"]["value"].reshape(-1, 1)
    expected = 10.0 * dist.Normal(mu, 1.0).log_prob(x[idx]).sum(-1)
    assert torch.allclose(density.get("likelihood"), expected, rtol=1e-5)


def test_temper_scales_likelihood_only_scalar_and_per_particle():
    program = Program(nested, (DATA,))
    torch.manual_seed(1)
    trace, base = program.run(4)
    beta = torch.tensor([0.0, 0.25, 0.5, 1.0])
    for b in (0.3, beta):
        torch.manual_seed(1)
        _, tempered = program.run(4, TemperMessenger(b))
        assert torch.allclose(tempered.get("prior"), base.get("prior"))
        assert torch.allclose(tempered.get("likelihood"), b * base.get("likelihood"), atol=1e-5)
    with pytest.raises(ValueError, match="beta has 3 entries"):
        program.run(4, TemperMessenger(torch.ones(3)))


def test_unconstrain_matches_pyro_potential_and_inverts():
    def model():
        s = pyro.sample("s", dist.Gamma(2.0, 1.0))
        p = pyro.sample("p", dist.Dirichlet(torch.ones(3)))
        with pyro.plate("n", 2):
            pyro.sample("u", dist.Uniform(-1.0, 2.0))  # Pyro freezes parameter-dependent supports
        pyro.sample("obs", dist.Normal(s, 1.0), obs=torch.tensor(1.0))
        return p

    program = Program(model)
    trace, density = program.run(5, UnconstrainMessenger())
    u = {k: trace.nodes[k]["infer"][UNCONSTRAINED] for k in ("s", "p", "u")}
    assert u["p"].shape[-1] == 2  # the simplex loses a dimension in unconstrained space
    _, again = program.run(5, UnconstrainMessenger(u))
    assert torch.allclose(again.log_joint + again.get("jacobian"), density.log_joint + density.get("jacobian"), atol=1e-5)
    _, potential_fn, _, _ = initialize_model(model)
    for i in range(5):
        point = {"s": u["s"][i].squeeze(), "p": u["p"][i].squeeze(), "u": u["u"][i].squeeze()}
        assert torch.allclose(-potential_fn(point), again.log_joint[i] + again.get("jacobian")[i], atol=1e-4)


def test_unconstrain_rejects_discrete_latents_by_name():
    def model():
        pyro.sample("k", dist.Poisson(3.0))

    with pytest.raises(DiscreteLatentError, match="'k'"):
        Program(model).run(2, UnconstrainMessenger())


def test_propose_records_log_q_and_checks_sites():
    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu, 1.0), obs=torch.tensor(0.5))

    def guide():
        pyro.sample("mu", dist.Normal(0.25, 0.7))

    program = Program(model)
    guide_trace, _ = Program(guide).run(8)
    propose = ProposeMessenger(guide_trace)
    trace, density = program.run(8, propose)
    propose.check_all_used()
    mu = guide_trace.nodes["mu"]["value"]
    assert torch.equal(trace.nodes["mu"]["value"], mu)
    assert torch.allclose(density.get("proposal"), dist.Normal(0.25, 0.7).log_prob(mu).reshape(-1))

    def extra_guide():
        pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("nu", dist.Normal(0.0, 1.0))

    propose = ProposeMessenger(Program(extra_guide).run(8)[0])
    program.run(8, propose)
    with pytest.raises(GuideMismatchError, match="nu"):
        propose.check_all_used()

    def empty_guide():
        pyro.sample("other", dist.Normal(0.0, 1.0))

    with pytest.raises(GuideMismatchError, match="'mu'"):
        program.run(8, ProposeMessenger(Program(empty_guide).run(8)[0]))


def test_resample_reorders_every_site_along_particles():
    program = Program(nested, (DATA,))
    trace, _ = program.run(5)
    ancestors = torch.tensor([4, 4, 0, 2, 1])
    again, _ = program.run(5, ResampleMessenger(trace, ancestors))
    for name in ("scale", "loc"):
        assert torch.equal(again.nodes[name]["value"], trace.nodes[name]["value"][ancestors])
    with pytest.raises(ValueError, match="1-D"):
        ResampleMessenger(trace, ancestors.reshape(5, 1))


def test_handlers_compose_with_pyro_condition_block_and_scale():
    def model():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        b = pyro.sample("b", dist.Normal(a, 1.0))
        with poutine.scale(scale=2.0):
            pyro.sample("c", dist.Normal(b, 1.0), obs=torch.tensor(0.0))

    conditioned = poutine.condition(model, data={"b": torch.tensor(0.3)})
    program = Program(conditioned)
    assert set(program.latent_sites()) == {"a"}
    trace, density = program.run(4)
    a = trace.nodes["a"]["value"].reshape(-1)
    expected_lik = dist.Normal(a, 1.0).log_prob(torch.tensor(0.3)) + 2 * dist.Normal(0.3, 1.0).log_prob(torch.tensor(0.0))
    assert torch.allclose(density.get("likelihood"), expected_lik, atol=1e-6)
    hidden = poutine.block(model, hide=["c"])
    _, density = Program(hidden).run(4)
    assert "c" not in density.site_terms


def test_model_errors_name_the_problem():
    def no_latents():
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))

    with pytest.raises(ModelError, match="no latent sites"):
        Program(no_latents).sites

    def bad_shape():
        with pyro.plate("data", 3):
            pyro.sample("y", dist.Normal(torch.zeros(4), 1.0))

    with pytest.raises(ModelError, match="plate|shape|size"):
        Program(bad_shape).sites
    with pytest.raises(TypeError, match="callable"):
        Program(42)
