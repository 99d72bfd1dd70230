"""The exact terminal distribution of a forward policy on an enumerable environment.

Dynamic programming over the DAG of states: probability mass starts at s_0 and is pushed one step
at a time through P_F (one network pass over all states, then sparse scatter-adds), so the
terminal distribution is exact, with no sampling noise (10^5 samples of a 4096-state grid have an
L1 noise floor near 0.15; this has none).
"""
from __future__ import annotations

import torch

from ppl.inference.gfn.env import Env


@torch.no_grad()
def terminal_distribution(env: Env, policy, chunk: int = 65536) -> torch.Tensor:
    """P_T(x) over ``env.all_states()`` (float64), summing over every path the policy can take."""
    states = env.all_states()
    S = states.shape[0]
    mask = env.forward_mask(states)
    logp = torch.cat([policy.log_pf(env.encode(states[i:i + chunk]), mask[i:i + chunk])
                      for i in range(0, S, chunk)]).double()
    probs = logp.exp().masked_fill(~mask, 0.0)
    A = env.n_actions
    moves = torch.arange(A - 1, device=states.device)
    src = torch.arange(S, device=states.device).repeat_interleave(A - 1)
    act = moves.repeat(S)
    ok = mask[:, :-1].reshape(-1)
    src, act = src[ok], act[ok]
    child = env.state_index(env.step(states[src], act))
    w = probs[src, act]
    reach = torch.zeros(S, dtype=torch.float64, device=states.device)
    reach[env.state_index(env.initial(1))] = 1.0
    term = torch.zeros_like(reach)
    for _ in range(env.max_steps):
        term += reach * probs[:, env.stop]
        nxt = torch.zeros_like(reach).index_add_(0, child, reach[src] * w)
        reach = nxt
        if float(reach.sum()) < 1e-14:
            break
    return term


def l1_to_target(env: Env, policy) -> float:
    """Sum |P_T(x) - R(x)/Z| over all objects (exact on both sides)."""
    return float((terminal_distribution(env, policy) - env.true_distribution()).abs().sum())
