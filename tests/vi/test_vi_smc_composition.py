"""Composition of VI with SMC on the LGSSM: FIVO-trained proposals, the guided-filter adapter, CTL twists."""
import math

import pytest
import torch

from ppl.inference.smc import StateSpaceFK, TwistedFK, particle_filter, run_smc
from ppl.inference.vi import (LGSSMTwistedProposalFK, LinearGaussianProposal, QuadraticTwist, as_proposal_program, fivo,
                              lgssm_fk, lgssm_optimal_twist, lgssm_sample, log_evidence_spread, train_twists)
from ppl.models.lgssm import kalman_filter, kalman_smoother, lgssm_init, lgssm_step, simulate

A, Q, R = 0.9, 1.0, 0.5



@pytest.fixture(scope="module")
def y():
    return simulate(T=12, seed=1)["y"].double()


@pytest.fixture(scope="module")
def trained_proposal():
    """FIVO on fresh simulated sequences each step (128 systems of 2 particles, one sequence each)."""
    q = LinearGaussianProposal()
    hist = fivo(lambda: lgssm_fk(lgssm_sample(128, 12), proposal=q, batched=True), q.parameters(), particles=2,
                systems=128, steps=100, lr=0.1, schedule="cosine", seed=0)
    return q, hist


def _optimal_proposal(t, xp, y_t):
    """p(x_t | x_{t-1}, y_t) of the LGSSM (p(x_0 | y_0) at t = 0)."""
    v = 1 / (1 / Q**2 + 1 / R**2) if t > 0 else 1 / ((1 - A * A) / Q**2 + 1 / R**2)
    mean = v * (A * xp / Q**2 + y_t / R**2) if t > 0 else v * y_t / R**2 + 0 * xp
    return torch.distributions.Normal(mean, v**0.5)


def _unbiased(lz, exact):
    """mean of Z_hat / Z within 4 Monte Carlo standard errors of 1 (unbiasedness in evidence scale)."""
    w = torch.exp(lz - exact)
    se = float(w.std()) / math.sqrt(len(w))
    return abs(float(w.mean()) - 1.0) < 4 * se + 1e-3, float(w.mean()), se


def test_fivo_learns_the_locally_optimal_proposal(y, trained_proposal):
    q, hist = trained_proposal
    exact, _, _ = kalman_filter(y, A, Q, R)
    assert sum(hist.loss[-10:]) < sum(hist.loss[:10])  # the FIVO bound went up
    with torch.no_grad():
        lz_b, var_b, _ = log_evidence_spread(lgssm_fk(y), 64, 400, seed=1)
        lz_q, var_q, _ = log_evidence_spread(lgssm_fk(y, proposal=q), 64, 400, seed=1)
        _, var_o, _ = log_evidence_spread(lgssm_fk(y, proposal=_optimal_proposal), 64, 400, seed=1)
    ok, mean, se = _unbiased(lz_q, exact)
    assert ok, (mean, se)
    assert var_q < 0.1 * var_b and var_q < 2 * var_o, (var_q, var_b, var_o)
    # coefficients from 0 at initialisation to the optimal ones: mean 0.18 x + 0.8 y, sd sqrt(0.2)
    w, b = q.step.weight.detach(), q.step.bias.detach()
    assert abs(float(w[0, 0]) - 0.18) < 0.1 and abs(float(w[0, 1]) - 0.8) < 0.1 and abs(float(b[0])) < 0.1
    assert abs(float(b[1]) - 0.5 * math.log(0.2)) < 0.1 and float(w[1].abs().max()) < 0.1


def test_adapter_makes_a_guided_particle_filter_from_the_trained_proposal(y, trained_proposal):
    q, _ = trained_proposal
    exact, _, _ = kalman_filter(y, A, Q, R)
    init_kwargs = {"m0": torch.tensor(0.0, dtype=torch.float64)}
    prog = as_proposal_program(q)
    guided = StateSpaceFK(lgssm_init, lgssm_step, y, proposal=prog, init_kwargs=init_kwargs)
    boot = StateSpaceFK(lgssm_init, lgssm_step, y, init_kwargs=init_kwargs)
    lz_g = run_smc(guided, 32, systems=150, seed=2, keep_history=False).log_evidence.double()
    lz_b = run_smc(boot, 32, systems=150, seed=2, keep_history=False).log_evidence.double()
    ok, mean, se = _unbiased(lz_g, exact)
    assert ok, (mean, se)
    assert float(lz_g.var()) < 0.5 * float(lz_b.var())
    res = particle_filter(lgssm_init, lgssm_step, y, particles=500, proposal=prog, seed=0, init_kwargs=init_kwargs)
    assert abs(res.log_evidence - exact) < 4 * res.log_evidence_se + 0.02
    assert res.samples["x_5"].shape == (1, 500)


def test_optimal_twist_matches_the_backward_recursion_by_brute_force():
    yy = simulate(T=4, seed=3)["y"].double()
    h, P = lgssm_optimal_twist(yy, A, Q, R)
    # log p(y_{1:3} | x_0) on a grid from the Kalman filter started at a point mass x_0
    xs = torch.linspace(-2, 2, 5, dtype=torch.float64)
    vals = torch.tensor([kalman_filter(yy[1:], A, Q, R, m0=A * float(x), s0=Q)[0] for x in xs], dtype=torch.float64)
    quad = h[0] * xs - 0.5 * P[0] * xs**2
    diff = vals - quad
    assert float(diff.max() - diff.min()) < 1e-9  # equal up to a constant


@pytest.fixture(scope="module")
def trained_twist(y):
    tw = QuadraticTwist(len(y))
    hist = train_twists(None, tw, twisted=LGSSMTwistedProposalFK(y, tw, A, Q, R), particles=256, systems=4, steps=80,
                        lr=0.1, schedule="cosine", seed=0)
    return tw, hist


def _fixed_twist(T, h, P):
    tw = QuadraticTwist(T)
    with torch.no_grad():
        tw.h.copy_(h)
        tw.raw_precision.copy_(torch.log(torch.expm1(P)) if float(P.min()) > 0 else torch.full_like(P, -60.0))
    return tw


def test_ctl_twist_targets_the_smoothing_marginals(y, trained_twist):
    tw, _ = trained_twist
    _, fm, fv = kalman_filter(y, A, Q, R)
    sm, sv = kalman_smoother(y, A, Q, R)
    with torch.no_grad():
        # the twisted target pi_t ∝ filter_t x psi_t is Gaussian; for the optimal twist it is the smoothing marginal
        prec = 1 / fv[:-1] + tw.precision
        mean = (fm[:-1] / fv[:-1] + tw.h) / prec
    err = (mean - sm[:-1]).abs() / sv[:-1].sqrt()
    untwisted = (fm[:-1] - sm[:-1]).abs() / sv[:-1].sqrt()
    assert float(err.mean()) < 0.2 * float(untwisted.mean()), (err, untwisted)
    assert float((prec.rsqrt() / sv[:-1].sqrt() - 1).abs().max()) < 0.1


def test_twisted_smc_with_learned_twist_is_unbiased_and_less_variable(y, trained_twist):
    tw, _ = trained_twist
    exact, _, _ = kalman_filter(y, A, Q, R)
    h_opt, P_opt = lgssm_optimal_twist(y, A, Q, R)
    opt = _fixed_twist(len(y), h_opt, P_opt)
    with torch.no_grad():
        # bootstrap proposal, twisted resampling (TwistedFK)
        _, var_b, _ = log_evidence_spread(lgssm_fk(y), 64, 1000, seed=4)
        lz_t, var_t, _ = log_evidence_spread(TwistedFK(lgssm_fk(y), tw), 64, 1000, seed=4)
        _, var_o, _ = log_evidence_spread(TwistedFK(lgssm_fk(y), opt), 64, 1000, seed=4)
        # fully twisted proposal: the optimal twist gives the exact evidence with zero variance
        zero = _fixed_twist(len(y), torch.zeros_like(h_opt), torch.zeros_like(P_opt))
        _, var_z, _ = log_evidence_spread(LGSSMTwistedProposalFK(y, zero, A, Q, R), 64, 400, seed=5)
        lz_p, var_p, _ = log_evidence_spread(LGSSMTwistedProposalFK(y, tw, A, Q, R), 64, 400, seed=5)
        lz_o, var_po, _ = log_evidence_spread(LGSSMTwistedProposalFK(y, opt, A, Q, R), 64, 50, seed=5)
    for lz in (lz_t, lz_p):
        ok, m, se = _unbiased(lz, exact)
        assert ok, (m, se)
    assert var_t < 0.85 * var_b and var_t < 1.2 * var_o, (var_t, var_b, var_o)
    assert float((lz_o - exact).abs().max()) < 1e-9 and var_po < 1e-18
    assert var_p < 0.05 * var_z, (var_p, var_z)


def test_fivo_trains_through_the_pyro_step_form(y):
    q = LinearGaussianProposal()
    init_kwargs = {"m0": torch.tensor(0.0, dtype=torch.float64)}
    prog = as_proposal_program(q, detach=False)
    hist = fivo(lambda: StateSpaceFK(lgssm_init, lgssm_step, y, proposal=prog, init_kwargs=init_kwargs),
                q.parameters(), particles=8, systems=16, steps=25, lr=0.1, seed=0)
    assert sum(hist.loss[-5:]) < sum(hist.loss[:5]) - 0.5  # from q = N(0, 1) the bound rises fast
    assert float(q.step.weight[0, 1].detach()) > 0.3  # the mean moves toward y_t


def test_bad_input_is_named():
    y2 = lgssm_sample(3, 5)
    with pytest.raises(ValueError, match="does not divide"):
        run_smc(lgssm_fk(y2, batched=True), 4, systems=2)
    with pytest.raises(ValueError, match="at least 2 time steps"):
        QuadraticTwist(1)
    with pytest.raises(KeyError, match="'z'"):
        TwistedFK(lgssm_fk(y2[:, 0]), QuadraticTwist(5, key="z")).init(4)
    with pytest.raises(ValueError, match="base Feynman"):
        train_twists(None, QuadraticTwist(5), steps=1)
