"""Each kernel leaves a known target invariant: chains started at exact draws stay exact draws.

Chains are independent, so after a few transitions from exact samples the C final points are C
independent exact samples; their moments are compared with the truth within 4.5 standard errors
and their projections with fresh exact samples by a two-sample Kolmogorov-Smirnov test.
"""
import math

import pytest
import torch
from scipy import stats

from ppl.inference.mcmc import (HMC, MALA, NUTS, RWMH, ChEES, DualAveraging, EllipticalSlice, Welford,
                                find_reasonable_step_size, stan_windows)

D = 3
C = 4000


def gaussian_target(seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(D, D, generator=g, dtype=torch.float64)
    cov = a @ a.T / D + 0.3 * torch.eye(D, dtype=torch.float64)
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    prec = torch.linalg.inv(cov)
    chol = torch.linalg.cholesky(cov)

    def logp_and_grad(z):
        r = z - mean
        return -0.5 * ((r @ prec) * r).sum(-1), -(r @ prec)

    def exact(n):
        return mean + torch.randn(n, D, dtype=torch.float64) @ chol.T

    return logp_and_grad, exact, mean, cov


def check_exact(z, exact, mean, cov):
    n = z.shape[0]
    sd = cov.diag().sqrt()
    assert ((z.mean(0) - mean).abs() < 4.5 * sd / math.sqrt(n)).all(), (z.mean(0), mean)
    var = z.var(0)
    assert ((var - cov.diag()).abs() < 4.5 * cov.diag() * math.sqrt(2.0 / n)).all(), (var, cov.diag())
    ref = exact(n)
    direction = torch.tensor([0.6, -0.3, 0.74], dtype=torch.float64)
    for proj, ref_proj in ((z @ direction, ref @ direction), (z[:, 0], ref[:, 0])):
        assert stats.ks_2samp(proj.numpy(), ref_proj.numpy()).pvalue > 1e-3


def make(name, f):
    return {
        "nuts": lambda: NUTS(f, max_tree_depth=6),
        "hmc": lambda: HMC(f, num_steps=5),
        "mala": lambda: MALA(f),
        "rwmh": lambda: RWMH(f),
        "chees": lambda: ChEES(f, trajectory_length=1.5),
        "elliptical": lambda: EllipticalSlice(f, mean=torch.zeros(D, dtype=torch.float64)),
    }[name]()


STEP = {"nuts": 0.4, "hmc": 0.3, "mala": 0.5, "rwmh": 0.8, "chees": 0.3, "elliptical": 1.0}


@pytest.mark.parametrize("name", ["nuts", "hmc", "mala", "rwmh", "chees", "elliptical"])
def test_kernel_leaves_target_invariant(name):
    torch.manual_seed(1)
    f, exact, mean, cov = gaussian_target()
    kernel = make(name, f)
    z0 = exact(C)
    # per-chain step sizes (as SMC uses them): a spread around the nominal value
    eps = STEP[name] * (0.5 + torch.rand(C, dtype=torch.float64))
    state = kernel.init(z0, step_size=eps, inv_mass=cov.diag() if name != "elliptical" else 4 * cov.diag())
    moved = torch.zeros(C, dtype=torch.bool)
    for _ in range(4):
        state, info = kernel.step(state)
        moved |= info.accepted
        assert info.accept_prob.shape == (C,) and info.n_steps.shape == (C,)
    assert moved.float().mean() > 0.5  # the kernel really moves the chains
    assert (state.z != z0).any(-1).float().mean() > 0.5
    check_exact(state.z, exact, mean, cov)
    torch.testing.assert_close(state.lp, f(state.z)[0])


def test_dense_mass_hmc_invariant():
    torch.manual_seed(2)
    f, exact, mean, cov = gaussian_target(seed=3)
    kernel = HMC(f, num_steps=4)
    state = kernel.init(exact(C), step_size=0.5, inv_mass=cov, dense=True)
    assert state.inv_mass.shape == (C, D, D)
    for _ in range(3):
        state, info = kernel.step(state)
    assert info.accepted.float().mean() > 0.5
    check_exact(state.z, exact, mean, cov)


def test_nuts_records_lockstep_cost_and_depth():
    torch.manual_seed(3)
    f, exact, mean, cov = gaussian_target()
    kernel = NUTS(f, max_tree_depth=8)
    eps = torch.tensor([0.05, 0.5, 1.0, 0.2], dtype=torch.float64)  # very different trees per chain
    state, info = kernel.step(kernel.init(exact(4), step_size=eps))
    assert info.n_evals >= int(info.n_steps.max())  # the batch runs as long as the slowest chain
    assert (info.n_steps >= 2 ** info.tree_depth - 1).all()
    assert (info.n_steps <= 2 ** (info.tree_depth + 1) - 1).all()
    assert info.tree_depth[0] > info.tree_depth[2]  # a small step needs a deeper tree


def test_nuts_flags_divergence_at_huge_step():
    torch.manual_seed(4)
    f, exact, mean, cov = gaussian_target()
    kernel = NUTS(f)
    z0 = exact(50)
    state, info = kernel.step(kernel.init(z0, step_size=200.0))
    assert info.diverging.all()
    assert torch.equal(state.z, z0)


def test_dual_averaging_finds_target_acceptance():
    torch.manual_seed(5)
    f, exact, mean, cov = gaussian_target()
    kernel = HMC(f, num_steps=3)
    state = kernel.init(exact(200), step_size=torch.full((200,), 0.01, dtype=torch.float64))
    state = state._replace(step_size=find_reasonable_step_size(kernel, state))
    da = DualAveraging.start(state.step_size)
    for _ in range(300):
        state, info = kernel.step(state)
        da = da.update(info.accept_prob, 0.8)
        state = state._replace(step_size=da.step_size)
    state = state._replace(step_size=da.final_step_size)
    acc = torch.stack([kernel.step(state)[1].accept_prob for _ in range(20)]).mean()
    assert 0.7 < float(acc) < 0.92  # dual averaging ends a little above its target, as in Stan


def test_welford_and_windows():
    z = torch.randn(1000, 2, 3, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    w = Welford.start(z[0], dense=False)
    wd = Welford.start(z[0], dense=True)
    for x in z:
        w, wd = w.update(x), wd.update(x)
    torch.testing.assert_close(w.mean, z.mean(0))
    shrink = 1000 / 1005.0
    torch.testing.assert_close(w.inv_mass(), shrink * z.var(0) + 1e-3 * 5 / 1005)
    torch.testing.assert_close(torch.diagonal(wd.inv_mass(), dim1=-2, dim2=-1), w.inv_mass())
    assert stan_windows(1000) == [99, 149, 249, 449, 949]
    assert stan_windows(100)[-1] == 89
