"""Objectives as functions of (log p, log q): values, gradients and baselines against closed forms."""
import math

import pytest
import torch

import ppl.inference.vi as V
from ppl.inference.vi.objectives import log_mean_exp


def test_values_and_identities():
    torch.manual_seed(0)
    log_p, log_q = torch.randn(7, 3), torch.randn(7, 3)
    lw = log_p - log_q
    assert torch.allclose(V.elbo_loss(log_p, log_q), -lw.mean())
    assert torch.allclose(V.iwae_loss(log_p, log_q), -(torch.logsumexp(lw, 0) - math.log(7)).mean())
    assert torch.allclose(V.iwae_loss(log_p[:1], log_q[:1]), V.elbo_loss(log_p[:1], log_q[:1]))
    # surrogates evaluate to the bound they estimate (plus a term whose gradient is the estimator)
    assert torch.allclose(V.score_function_elbo_loss(log_p, log_q, baseline=None), -(lw + lw * log_q).mean())
    with pytest.raises(ValueError, match="share a shape"):
        V.elbo_loss(log_p, log_q[:, :2])
    with pytest.raises(ValueError, match="at least 2"):
        V.vimco_loss(log_p[:1], log_q[:1])


def test_vimco_gradient_matches_leave_one_out_formula():
    torch.manual_seed(1)
    k = 5
    log_p = torch.randn(k)
    log_q = torch.randn(k, requires_grad=True)
    V.vimco_loss(log_p, log_q).backward()
    lw = (log_p - log_q).detach()
    bound = log_mean_exp(lw)
    w = torch.softmax(lw, 0)
    expected = torch.empty(k)
    for j in range(k):  # reference: explicit loop (test only)
        rep = lw.clone()
        rep[j] = (lw.sum() - lw[j]) / (k - 1)
        signal = bound - log_mean_exp(rep)
        # d/dlog_q_j of -(bound + signal_j * log_q_j) with bound = logmeanexp(log_p - log_q)
        expected[j] = w[j] - signal
    assert torch.allclose(log_q.grad, expected, atol=1e-5)


def test_rws_weights_and_wake_phi_is_kl_gradient_direction():
    torch.manual_seed(2)
    log_p = torch.randn(6, requires_grad=True)
    log_q = torch.randn(6, requires_grad=True)
    (V.rws_wake_theta_loss(log_p, log_q) + V.rws_wake_phi_loss(log_p, log_q)).backward()
    w = torch.softmax((log_p - log_q).detach(), 0)
    assert torch.allclose(log_p.grad, -w) and torch.allclose(log_q.grad, -w)


def test_score_function_gradient_is_unbiased_with_loo_baseline():
    """d/dm ELBO for q = N(m, 1), p = N(2, 1): exact gradient 2 - m; the score estimator matches in expectation."""
    m = torch.tensor(0.5, requires_grad=True)
    torch.manual_seed(3)
    k = 200_000
    z = (m.detach() + torch.randn(k))
    log_q = torch.distributions.Normal(m, 1.0).log_prob(z)
    log_p = torch.distributions.Normal(2.0, 1.0).log_prob(z)
    V.score_function_elbo_loss(log_p, log_q, baseline="loo").backward()
    assert abs(-float(m.grad) - 1.5) < 0.03


def test_csis_loss_and_named_objectives():
    log_q = torch.tensor([-1.0, -3.0])
    assert float(V.csis_loss(log_q)) == 2.0
    for name in ("elbo", "iwae", "score", "rws", "vimco"):
        assert callable(V.get_objective(name))
