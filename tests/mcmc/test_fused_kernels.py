"""Recorded graphs change speed, never results: graph simplification and fused NUTS steps.

The fused path (``compile="fx"`` / ``"auto"``) must give the transitions of the plain path
(``compile=False``) draw for draw from the same seed: random numbers are drawn outside the graphs,
so any difference is a recording bug (the first NUTS doubling, whose trajectory ends are the same
tensor, once was one).
"""
import copy

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from ppl.inference.graph_simplify import simplify
from ppl.inference.mcmc import NUTS
from ppl.inference.mcmc.potential import Potential
from ppl.inference.program import Program
from ppl.inference.target import UnconstrainedTarget
from ppl.models import get_model


def target_of(name):
    spec = get_model(name)
    return UnconstrainedTarget(Program(spec.model, (), spec.data(seed=0)))


def run_nuts(potential, z, steps, seed, dense=False):
    torch.manual_seed(seed)
    kernel = NUTS(potential, max_tree_depth=6)
    state = kernel.init(z, step_size=0.2, dense=dense)
    trace = []
    for _ in range(steps):
        state, info = kernel.step(state)
        trace.append((state.z, state.lp, info.accept_prob, info.n_steps, info.tree_depth, info.diverging))
    return trace


@pytest.mark.parametrize("name,dense", [("eight_schools_noncentered", False), ("logistic_regression_small", False),
                                        ("eight_schools_noncentered", True)])
def test_fused_nuts_reproduces_plain_nuts(name, dense):
    target = target_of(name)
    z = 0.3 * torch.randn(6, target.dim, generator=torch.Generator().manual_seed(1), dtype=target.dtype)
    plain = run_nuts(Potential(target, compile=False), z, 12, seed=3, dense=dense)
    fused_potential = Potential(target, compile="fx")
    fused = run_nuts(fused_potential, z, 12, seed=3, dense=dense)
    assert {k[0] for k, g in fused_potential._graphs.items() if g is not None} >= {"nuts_leaf", "nuts_begin", "nuts_merge"}
    for a, b in zip(plain, fused):
        for x, y in zip(a, b):
            if x.is_floating_point():
                torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-4)
            else:
                assert torch.equal(x, y)


def program_graph(name, chains=3):
    target = target_of(name)
    potential = Potential(target, compile=False)
    z = torch.randn(chains, target.dim, dtype=target.dtype)
    beta = torch.ones(chains, dtype=target.dtype)
    return make_fx(potential._eager)(z, beta), (z, beta), target


@pytest.mark.parametrize("name", ["logistic_regression_small", "eight_schools_noncentered", "normal_normal_vector"])
def test_simplify_keeps_values_and_drops_nodes(name):
    graph, example, target = program_graph(name)
    before = len(graph.graph.nodes)
    slim = simplify(copy.deepcopy(graph), example)
    assert len(slim.graph.nodes) < before
    for _ in range(3):  # fresh inputs, not only the example the constants were folded at
        z = torch.randn_like(example[0]) * 2
        beta = torch.rand_like(example[1])
        for got, want in zip(slim(z, beta), graph(z, beta)):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_simplify_leaves_random_and_mutating_graphs_correct():
    def noisy(x):
        scale = torch.ones(3) * 2.0          # constant: folded
        return x * scale + torch.rand(3)     # random: must stay in the graph

    x = torch.zeros(3)
    slim = simplify(make_fx(noisy)(x), (x,))
    assert not torch.equal(slim(x), slim(x))
    assert torch.allclose(slim(x + 1.0) - slim(x), torch.full((3,), 2.0), atol=1.0)

    def mutating(x):
        buf = torch.zeros(6)
        view = buf.view(2, 3)
        view.add_(x)                         # written in place through a view: buf must not be folded
        scale = torch.ones(3).mul(2.0).add(1.0)  # an unrelated constant: still folded
        return buf.view(2, 3) * scale

    graph = make_fx(mutating)(x)
    before = len(graph.graph.nodes)
    slim = simplify(graph, (x,))
    assert len(slim.graph.nodes) < before
    torch.testing.assert_close(slim(torch.ones(3)), torch.full((2, 3), 3.0))
    torch.testing.assert_close(slim(torch.full((3,), 2.0)), torch.full((2, 3), 6.0))


def model_with_shape_noise(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    zero = torch.zeros_like(mu).sum(-1)      # a shape-only value: folds to a constant
    pyro.sample("y", dist.Normal(mu + zero.unsqueeze(-1), 1.0).to_event(1), obs=y)


def test_fused_graph_used_by_mcmc_driver_matches_plain_run():
    from ppl.inference.mcmc import mcmc
    y = torch.tensor([0.5, -1.0])
    runs = [mcmc(model_with_shape_noise, model_kwargs={"y": y}, kernel="nuts", chains=3, warmup=30, draws=20,
                 seed=5, progress=False, compile=mode) for mode in (False, "auto")]
    torch.testing.assert_close(runs[1].samples["mu"], runs[0].samples["mu"], rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_inductor_nuts_reproduces_plain_nuts():
    target = target_of("eight_schools_noncentered")
    z = 0.3 * torch.randn(4, target.dim, generator=torch.Generator().manual_seed(1), dtype=target.dtype)
    plain = run_nuts(Potential(target, compile=False), z, 8, seed=3)
    fused = run_nuts(Potential(target, compile="inductor"), z, 8, seed=3)
    for a, b in zip(plain, fused):
        torch.testing.assert_close(b[0], a[0], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kernel", ["hmc", "chees"])
def test_fused_hmc_reproduces_plain_hmc(kernel):
    from ppl.inference.mcmc import ChEES, HMC
    target = target_of("eight_schools_noncentered")
    z = 0.3 * torch.randn(6, target.dim, generator=torch.Generator().manual_seed(1), dtype=target.dtype)
    runs = []
    for mode in (False, "fx"):
        potential = Potential(target, compile=mode)
        k = HMC(potential, num_steps=4, jitter=0.2) if kernel == "hmc" else ChEES(potential, trajectory_length=1.0)
        torch.manual_seed(2)
        state = k.init(z, step_size=torch.linspace(0.05, 0.4, 6, dtype=target.dtype))
        out = []
        for _ in range(10):
            state, info = k.step(state)
            out.append((state.z, state.lp, info.accept_prob, info.n_steps, info.diverging))
        runs.append(out)
    assert any(key[0] == "hmc_leapfrog" and g is not None for key, g in potential._graphs.items())
    for a, b in zip(*runs):
        for x, y in zip(a, b):
            if x.is_floating_point():
                torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-4)
            else:
                assert torch.equal(x, y)


def test_inductor_failure_falls_back_to_the_traced_graph(monkeypatch):
    import ppl.inference.mcmc.potential as P

    def broken(graph, probe):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(P, "_inductor", broken)
    target = target_of("eight_schools_noncentered")
    z = torch.randn(3, target.dim, dtype=target.dtype)
    potential = Potential(target, compile="inductor")
    with pytest.warns(RuntimeWarning, match="inductor could not compile"):
        assert potential.compiled_for(z)
    for got, want in zip(potential(z), Potential(target, compile=False)(z)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
