"""log Z estimates from a GFlowNet: learned, importance-weighted (unbiased Z), ELBO-type lower and EUBO upper bounds.

With trajectories tau ~ P_F and log weights log w = log R(x) + log P_B(tau|x) - log P_F(tau), mean(w) is an
unbiased estimate of Z, mean(log w) a lower bound on log Z (ELBO); with target samples x ~ R/Z and
tau ~ P_B(.|x), mean(log w) is an upper bound (EUBO). The trained policy is thus an importance proposal.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ppl.inference.gfn.env import Env, sample_backward, sample_forward
from ppl.inference.gfn.losses import evaluate
from ppl.inference.gfn.policy import backward_policy_fn
from ppl.inference.result import log_mean_exp_with_se


@dataclass
class LogZEstimates:
    """The log Z estimates of one evaluation (``upper`` is None without target samples)."""

    learned: float
    importance: float
    importance_se: float
    lower: float
    upper: Optional[float] = None
    ess: float = 0.0


def importance_log_z(log_w: torch.Tensor):
    """(log mean exp(log_w), its delta-method se, ESS) of importance log weights."""
    log_z, se = log_mean_exp_with_se(log_w)
    w = torch.softmax(log_w.double(), 0)
    return log_z, se, float(1.0 / (w ** 2).sum())


@torch.no_grad()
def trajectory_log_weights(env: Env, policy, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """log R(x) + log P_B(tau|x) - log P_F(tau) for n on-policy trajectories."""
    tr = sample_forward(env, policy, n, generator=generator)
    t = evaluate(env, policy, tr)
    return tr.log_reward + t.sum_log_pb() - t.sum_log_pf()


@torch.no_grad()
def log_z_estimates(env: Env, policy, n: int = 4096, target: Optional[torch.Tensor] = None,
                    generator: Optional[torch.Generator] = None) -> LogZEstimates:
    """All estimates on an environment; ``target`` (terminal objects drawn from R/Z) enables the upper bound.

    On an enumerable environment pass ``target=sample_target(env, n)``.
    """
    log_w = trajectory_log_weights(env, policy, n, generator)
    iw, se, ess = importance_log_z(log_w)
    upper = None
    if target is not None:
        tr = sample_backward(env, target, None, backward_policy_fn(policy), generator)
        t = evaluate(env, policy, tr)
        upper = float((tr.log_reward + t.sum_log_pb() - t.sum_log_pf()).mean())
    return LogZEstimates(float(policy.log_z), iw, se, float(log_w.mean()), upper, ess)


def sample_target(env: Env, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Exact draws from R/Z on an enumerable environment (by enumeration)."""
    p = env.true_distribution()
    idx = torch.multinomial(p.float(), n, replacement=True, generator=generator)
    return env.all_states()[idx]
