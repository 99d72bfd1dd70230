"""Log-density accounting equals Pyro's ``Trace.log_prob_sum`` per particle, on generated models."""
import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyro import poutine

from ppl.inference.program import Program

PLATES = {"a": (2, -1), "b": (3, -2)}  # name -> (size, dim)


@st.composite
def model_specs(draw):
    """A random program: sites with random plate nestings, kinds, scales, masks and families."""
    n_sites = draw(st.integers(1, 5))
    sites = []
    for i in range(n_sites):
        plates = draw(st.sampled_from([(), ("a",), ("b",), ("a", "b")]))
        sites.append(dict(
            name=f"s{i}",
            plates=plates,
            observed=draw(st.booleans()) if i > 0 else False,
            family=draw(st.sampled_from(["normal", "gamma", "dirichlet", "normal_event"])),
            scale=draw(st.sampled_from([1.0, 0.5, 3.0])),
            masked=draw(st.booleans()),
            factor=draw(st.booleans()) and i > 0,
        ))
    return sites


def build(spec, seed=0):
    g = torch.Generator().manual_seed(seed)
    for s in spec:
        shape = [1, 1]
        for p in s["plates"]:
            size, dim = PLATES[p]
            shape[dim] = size
        s["mask_value"] = torch.rand(shape, generator=g) > 0.3
        s["obs_value"] = {
            "normal": torch.randn(shape, generator=g),
            "gamma": torch.rand(shape, generator=g) + 0.1,
            "dirichlet": torch.full(shape + [3], 1 / 3),
            "normal_event": torch.randn(shape + [2], generator=g),
        }[s["family"]]

    def model():
        prev = torch.tensor(0.0)
        plates = {p: pyro.plate(p, size, dim=dim) for p, (size, dim) in PLATES.items()}
        for s in spec:
            with contextlib_stack([plates[p] for p in s["plates"]]):
                loc = prev.tanh()
                fam = s["family"]
                d = {
                    "normal": lambda: dist.Normal(loc, 1.5),
                    "gamma": lambda: dist.Gamma(loc.exp(), 2.0),
                    "dirichlet": lambda: dist.Dirichlet(torch.ones(3) + loc.exp().unsqueeze(-1)),
                    "normal_event": lambda: dist.Normal(loc.unsqueeze(-1), 1.0).expand(loc.shape + (2,)).to_event(1),
                }[fam]()
                if s["masked"]:
                    d = d.mask(s["mask_value"])
                with poutine.scale(scale=s["scale"]):
                    if s["factor"]:
                        pyro.factor(s["name"], -(loc ** 2))
                        continue
                    x = pyro.sample(s["name"], d, obs=s["obs_value"] if s["observed"] else None)
                if not s["observed"]:
                    red = x.sum(-1) if fam in ("dirichlet", "normal_event") else x
                    while red.dim() < 2:
                        red = red.unsqueeze(0)
                    prev = red.sum((-1, -2), keepdim=True) / 4.0  # one value per particle, (..., 1, 1)
        return prev

    return model


class contextlib_stack:
    def __init__(self, cms):
        self.cms = cms

    def __enter__(self):
        for c in self.cms:
            c.__enter__()

    def __exit__(self, *e):
        for c in reversed(self.cms):
            c.__exit__(*e)


def _particle(trace, name, i):
    from ppl.handlers import particle_axis

    site = trace.nodes[name]
    axis = particle_axis(site)
    return site["value"] if axis is None else site["value"].select(axis, i)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=model_specs(), seed=st.integers(0, 2**16))
def test_accounting_matches_trace_log_prob_sum(spec, seed):
    model = build(spec, seed)
    program = Program(model, max_plate_nesting=2)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        trace, density = program.run(4)
    # the batched total equals Pyro's own sum over the whole batched trace
    assert torch.allclose(density.log_joint.sum(), trace.log_prob_sum(), rtol=1e-5, atol=1e-4)
    # and each particle's total equals an unbatched run with that particle's values
    latents = [s["name"] for s in spec if not s["observed"] and not s["factor"]]
    for i in range(4):
        values = {k: _particle(trace, k, i) for k in latents}
        single = poutine.trace(poutine.condition(model, data=values)).get_trace()
        # conditioned latents count as observed there; log_prob_sum sums all sites alike
        expected = single.log_prob_sum()
        assert torch.allclose(density.log_joint[i], expected, rtol=1e-5, atol=1e-4), (i, spec)


def test_roles_split_prior_and_likelihood():
    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.factor("f", -mu**2)
        with pyro.plate("data", 3):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=torch.tensor([0.1, 0.2, 0.3]))

    trace, density = Program(model).run(5)
    mu = trace.nodes["mu"]["value"].reshape(-1, 1)
    assert torch.allclose(density.get("prior"), dist.Normal(0.0, 1.0).log_prob(mu).reshape(-1))
    lik = dist.Normal(mu, 1.0).log_prob(torch.tensor([0.1, 0.2, 0.3])).sum(-1) - mu.reshape(-1) ** 2
    assert torch.allclose(density.get("likelihood"), lik.reshape(-1), atol=1e-6)
    assert set(density.site_terms) == {"mu", "f", "y"}
    with pytest.raises(ValueError, match="unknown role"):
        density.get("posterior")
