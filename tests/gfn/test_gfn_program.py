"""GFlowNets over Pyro programs: TB as a variance-reduced ELBO gradient, the ``gfn`` engine against exact answers."""
from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl.inference.gfn import AllRewardsInfiniteError, ProgramPolicy, VariableStructureError, gfn, run_policy
from ppl.inference.program import Program

PA = torch.tensor([0.2, 0.3, 0.5])
PB = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]])
LIK = torch.tensor([[0.3, 2.0, -1.0, 0.5], [1.0, -0.5, 0.0, 0.2], [-2.0, 0.4, 1.5, 0.0]])


def tree_model():
    a = pyro.sample("a", dist.Categorical(PA))
    b = pyro.sample("b", dist.Categorical(PB[a]))
    pyro.factor("lik", LIK[a, b])


def exact_tree():
    logp = PA.log().unsqueeze(1) + PB.log() + LIK  # (3, 4) log joint
    return logp, torch.logsumexp(logp.reshape(-1), 0)


def _enumerate(prog, policy):
    grid = torch.tensor(list(itertools.product(range(3), range(4))))
    _, log_pf, log_r, _, _ = run_policy(prog, policy, 12, values={"a": grid[:, 0], "b": grid[:, 1]})
    return grid, log_pf, log_r


def test_tb_gradient_is_twice_the_kl_gradient_for_any_log_z():
    """On a tree, E_q[grad TB] = 2 grad KL(q || p(.|y)) whatever log Z is (log Z is only a baseline)."""
    torch.manual_seed(0)
    prog = Program(tree_model)
    policy = ProgramPolicy(prog, hidden=16)
    params = [p for n, p in policy.named_parameters() if n != "log_z" and not n.startswith("flow.")]  # P_F's
    grid, log_pf, log_r = _enumerate(prog, policy)
    logp, log_z = exact_tree()
    assert torch.allclose(log_r, logp[grid[:, 0], grid[:, 1]], atol=1e-5)
    q = log_pf.exp()
    assert math.isclose(q.sum().item(), 1.0, rel_tol=1e-5)
    kl = (q * (log_pf - log_r)).sum() + log_z
    g_kl = torch.autograd.grad(kl, params, retain_graph=True)
    for c in (-3.0, 0.0, float(log_z), 5.0):
        tb = (q.detach() * (c + log_pf - log_r) ** 2).sum()  # exact expectation of the on-policy TB loss
        g_tb = torch.autograd.grad(tb, params, retain_graph=True)
        for a, b in zip(g_tb, g_kl):
            assert torch.allclose(a, 2 * b, atol=1e-5)


def test_vargrad_is_tb_with_log_z_at_the_batch_mean_and_has_lower_variance():
    torch.manual_seed(1)
    prog = Program(tree_model)
    policy = ProgramPolicy(prog, hidden=16)
    params = [p for n, p in policy.named_parameters() if n != "log_z" and not n.startswith("flow.")]  # P_F's
    _, log_pf, log_r, _, _ = run_policy(prog, policy, 64)
    d = log_pf - log_r
    g_var = torch.autograd.grad((d - d.mean()).pow(2).mean(), params, retain_graph=True)
    g_tb = torch.autograd.grad((d - d.mean().detach()).pow(2).mean(), params, retain_graph=True)
    for a, b in zip(g_var, g_tb):
        assert torch.allclose(a, b, atol=1e-6)
    # the optimal baseline reduces the variance of the single-sample score-function estimator
    grid, log_pf, log_r = _enumerate(prog, policy)
    q = log_pf.exp().detach()
    scores = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(lp, params, retain_graph=True)])
                          for lp in log_pf])
    mean_g = (q.unsqueeze(1) * (log_pf - log_r).detach().unsqueeze(1) * scores).sum(0)

    def var(c):
        g = (c + log_pf - log_r).detach().unsqueeze(1) * scores
        return float((q.unsqueeze(1) * (g - mean_g) ** 2).sum())

    c_opt = -float((q * (log_pf - log_r)).sum())  # log Z at its optimum = -E_q[log q - log R]
    assert var(c_opt) < var(0.0)


def test_gfn_engine_on_a_discrete_program_matches_enumeration():
    logp, log_z = exact_tree()
    post = (logp - log_z).exp()
    r = gfn(tree_model, steps=300, particles=256, samples=4000, seed=0, hidden=64)
    assert r.log_weights.shape == (1, 4000) and r.samples["a"].shape == (1, 4000)
    se = max(r.log_evidence_se, 1e-3)
    assert abs(r.log_evidence - float(log_z)) < 4 * se + 0.02
    assert abs(r.attrs["log_z_learned"] - float(log_z)) < 0.1
    w = r.normalized_weights().reshape(-1)
    a = r.samples["a"].reshape(-1)
    for k in range(3):
        p_hat = float(w[a == k].sum())
        assert abs(p_hat - float(post[k].sum())) < 0.03


def test_gfn_engine_on_a_conjugate_gaussian():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("s", dist.LogNormal(0.0, 0.5))  # a second latent, independent of y
        with pyro.plate("d", y.shape[0]):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = torch.tensor([0.5, 1.0, 1.5])
    exact = float(torch.distributions.MultivariateNormal(torch.zeros(3), torch.eye(3) + 1).log_prob(y))
    r = gfn(model, y, steps=250, particles=256, samples=2000, seed=0, hidden=32, lr=3e-3)
    assert abs(r.log_evidence - exact) < 4 * r.log_evidence_se + 0.02
    assert abs(float(r.mean("mu")) - 0.75) < 0.08
    assert r.samples["s"].min() > 0  # drawn in unconstrained space, mapped to the support


def test_all_infinite_rewards_are_explained():
    def model():
        x = pyro.sample("x", dist.Categorical(torch.ones(3) / 3))
        # bounds that depend on x: an impossible observation for every x, found by the engine
        # (static bounds are refused up front by the data check)
        pyro.sample("y", dist.Uniform(10.0 + x, 11.0 + x), obs=torch.tensor(0.0))

    with pytest.raises(AllRewardsInfiniteError, match="Explore more"):
        gfn(model, steps=2, particles=8, seed=0)


def test_variable_structure_is_an_error():
    calls = {"n": 0}

    def model():
        calls["n"] += 1
        pyro.sample("x", dist.Normal(0.0, 1.0))
        if calls["n"] % 2 == 0:
            pyro.sample("extra", dist.Normal(0.0, 1.0))

    with pytest.raises(VariableStructureError, match="vary"):
        gfn(model, steps=3, particles=8, seed=0)


def test_masked_invalid_choices_are_never_drawn():
    def model():
        pyro.sample("x", dist.Categorical(torch.tensor([0.5, 0.0, 0.5])))

    r = gfn(model, steps=5, particles=64, seed=0, epsilon=0.5)
    assert not (r.samples["x"] == 1).any()
