"""Variational objectives as losses over batched particles.

Each loss takes ``log_p`` and ``log_q`` of shape ``(K,)`` or ``(K, B)`` (K particles for each
of B observations or data points) and returns a scalar to minimise, averaged over B. Where the
gradient estimator differs from the value (score function, RWS, VIMCO) the loss is a surrogate
whose gradient is the estimator; ``bound(...)`` functions give the values.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Union

import torch

Baseline = Union[None, str, float, torch.Tensor]


def _check(log_p: torch.Tensor, log_q: torch.Tensor) -> None:
    if log_p.shape != log_q.shape or log_p.dim() not in (1, 2):
        raise ValueError(
            f"log_p and log_q must share a shape (K,) or (K, B); got {tuple(log_p.shape)} and {tuple(log_q.shape)}"
        )


def log_mean_exp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


def elbo_loss(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Negative ELBO with reparameterised gradients: -E_q[log p - log q]."""
    _check(log_p, log_q)
    return -(log_p - log_q).mean()


def iwae_loss(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Negative importance-weighted bound: -log (1/K) sum_k p/q (reparameterised)."""
    _check(log_p, log_q)
    return -log_mean_exp(log_p - log_q, 0).mean()


def _baseline(lw: torch.Tensor, baseline: Baseline) -> torch.Tensor:
    if baseline is None:
        return torch.zeros_like(lw)
    if isinstance(baseline, str):
        if baseline == "mean":
            return lw.mean(0, keepdim=True).expand_as(lw)
        if baseline == "loo":
            k = lw.shape[0]
            if k < 2:
                raise ValueError("a leave-one-out baseline needs at least 2 particles")
            return (lw.sum(0, keepdim=True) - lw) / (k - 1)
        raise ValueError(f"unknown baseline {baseline!r}; use None, 'mean', 'loo', a number or a tensor")
    return torch.as_tensor(baseline, dtype=lw.dtype, device=lw.device).expand_as(lw)


def score_function_elbo_loss(log_p: torch.Tensor, log_q: torch.Tensor, baseline: Baseline = "loo") -> torch.Tensor:
    """Surrogate for the ELBO with score-function gradients (non-reparameterisable, e.g. discrete, latents).

    Gradient: E_q[(log p - log q - b) grad log q] + E_q[grad log p] (model parameters); the
    baseline b ("loo": leave-one-out mean over the K particles, "mean", a number, or a tensor such
    as a running average or a learned baseline) reduces variance without bias. ``log_q`` must
    carry gradients to the guide's parameters and the samples must be detached.
    """
    _check(log_p, log_q)
    lw = log_p - log_q
    signal = (lw - _baseline(lw, baseline)).detach()
    return -(lw + signal * log_q).mean()


def rws_wake_theta_loss(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Reweighted wake-sleep, wake-theta: the IWAE gradient for the model, sum_k w_k grad log p_k."""
    _check(log_p, log_q)
    w = torch.softmax((log_p - log_q).detach(), 0)
    return -(w * log_p).sum(0).mean()


def rws_wake_phi_loss(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Reweighted wake-sleep, wake-phi: sum_k w_k grad log q_k, a self-normalised estimate of KL(p || q)'s gradient."""
    _check(log_p, log_q)
    w = torch.softmax((log_p - log_q).detach(), 0)
    return -(w * log_q).sum(0).mean()


def rws_loss(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Wake-theta and wake-phi together (model and guide parameters are disjoint, so the sum is both updates)."""
    return rws_wake_theta_loss(log_p, log_q) + rws_wake_phi_loss(log_p, log_q)


def vimco_loss(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """VIMCO surrogate (Mnih & Rezende 2016): IWAE bound with per-sample leave-one-out baselines.

    The learning signal of particle k is L - L_{-k}, where L_{-k} replaces log w_k by the mean of
    the other log weights. Gradients reach the model through L and the guide through the score.
    """
    _check(log_p, log_q)
    k = log_p.shape[0]
    if k < 2:
        raise ValueError("VIMCO needs at least 2 particles")
    lw = log_p - log_q
    bound = log_mean_exp(lw, 0)
    lw_d = lw.detach()
    others = (lw_d.sum(0, keepdim=True) - lw_d) / (k - 1)
    eye = torch.eye(k, dtype=torch.bool, device=lw.device).reshape((k, k) + (1,) * (lw.dim() - 1))
    # row j: the K log weights with entry j replaced by the mean of the others
    replaced = torch.where(eye, others.unsqueeze(0).expand((k,) + lw.shape), lw_d.unsqueeze(0).expand((k,) + lw.shape))
    loo = log_mean_exp(replaced, 1)  # (K, [B])
    signal = (bound.detach().unsqueeze(0) - loo).detach()
    return -(bound + (signal * log_q).sum(0)).mean()


def csis_loss(log_q: torch.Tensor) -> torch.Tensor:
    """CSIS / neural posterior estimation: -E_{p(z, x)}[log q(z | x)] over prior-predictive pairs."""
    return -log_q.mean()


OBJECTIVES: Dict[str, Callable[..., torch.Tensor]] = {
    "elbo": elbo_loss,
    "iwae": iwae_loss,
    "score": score_function_elbo_loss,
    "rws": rws_loss,
    "vimco": vimco_loss,
}


def get_objective(name: Union[str, Callable]) -> Callable[..., torch.Tensor]:
    """An objective by name ("elbo", "iwae", "score", "rws", "vimco") or a callable loss(log_p, log_q)."""
    if callable(name):
        return name
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)} or 'csis'/'npe' (amortize)") from None


REPARAMETERISED = {"elbo", "iwae"}
"""Objectives whose guide gradient flows through the samples (the others detach them)."""
