"""The No-U-Turn Sampler batched over chains: multinomial trajectory sampling, generalised U-turn criterion.

Every chain builds its own tree (own directions, own depth); the batch doubles all trees in
lockstep and a chain whose tree has stopped (U-turn, divergence) waits masked until every chain is
done. Subtrees are built iteratively with momentum checkpoints (as NumPyro's iterative NUTS), so
the U-turn checks inside a subtree need memory O(max_depth), not O(2^depth). ``StepInfo.n_evals``
is the lockstep cost (batched evaluations actually run), ``n_steps`` each chain's useful share.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from ppl.inference.mcmc.hmc import leapfrog
from ppl.inference.mcmc.state import (ChainState, LogDensityFn, StepInfo, kinetic, make_state,
                                      sample_momentum, velocity)


def is_turning(p_left: torch.Tensor, p_right: torch.Tensor, p_sum: torch.Tensor, inv_mass: torch.Tensor) -> torch.Tensor:
    """Generalised no-U-turn criterion (Betancourt 2017, A.4.2) between two ends of a trajectory, per chain."""
    rho = p_sum - 0.5 * (p_left + p_right)
    if inv_mass.dim() == 3 and p_left.dim() == 3:  # several checkpoints (K, C, D) against a dense metric
        v_left = torch.einsum("cde,kce->kcd", inv_mass, p_left)
        v_right = velocity(p_right, inv_mass)
    else:
        v_left, v_right = velocity(p_left, inv_mass), velocity(p_right, inv_mass)
    return ((v_left * rho).sum(-1) <= 0) | ((v_right * rho).sum(-1) <= 0)


def _checkpoint_range(i: int) -> Tuple[int, int]:
    """For odd leaf ``i`` of a subtree: the checkpoints that start the sub-subtrees ending at ``i``."""
    idx_max = bin(i >> 1).count("1")
    trailing, k = 0, i
    while k & 1:
        trailing, k = trailing + 1, k >> 1
    return idx_max - trailing + 1, idx_max


class NUTS:
    """Batched NUTS; ``step(state)`` runs one transition of every chain (trees up to ``max_tree_depth``)."""

    name = "nuts"
    target_accept = 0.8

    def __init__(self, logp_and_grad: LogDensityFn, max_tree_depth: int = 10,
                 divergence_threshold: float = 1000.0) -> None:
        if not 1 <= int(max_tree_depth) <= 30:
            raise ValueError(f"max_tree_depth must be in 1..30, got {max_tree_depth!r}")
        self.logp_and_grad = logp_and_grad
        self.max_tree_depth = int(max_tree_depth)
        self.divergence_threshold = float(divergence_threshold)

    def init(self, z: torch.Tensor, step_size: Union[float, torch.Tensor] = 0.1,
             inv_mass: Optional[torch.Tensor] = None, dense: bool = False) -> ChainState:
        return make_state(self.logp_and_grad, z, step_size, inv_mass, dense)

    def probe(self, state: ChainState) -> torch.Tensor:
        from ppl.inference.mcmc.hmc import HMC
        return HMC(self.logp_and_grad, num_steps=1).probe(state)

    def step(self, state: ChainState) -> Tuple[ChainState, StepInfo]:
        inv_mass = state.inv_mass
        z0, lp0, g0 = state.z, state.lp, state.grad
        c = z0.shape[0]
        p0 = sample_momentum(inv_mass, z0)
        h0 = -lp0 + kinetic(p0, inv_mass)
        eps = state.step_size.unsqueeze(-1)
        neg_inf = torch.full_like(lp0, -math.inf)
        zero = torch.zeros_like(lp0)
        # points are packed as (C, 3, D) = (z, p, grad) so that one torch.where moves all three
        start = torch.stack([z0, p0, g0], 1)
        left = right = start
        prop, prop_lp, prop_h = start, lp0, h0   # the tree's proposal
        log_w = torch.zeros_like(lp0)            # log sum of the tree's weights, relative to exp(-h0)
        p_sum = p0
        depth = torch.zeros(c, dtype=torch.long, device=z0.device)
        done = torch.zeros(c, dtype=torch.bool, device=z0.device)
        diverging = torch.zeros_like(done)
        moved = torch.zeros_like(done)
        sum_accept = torch.zeros_like(lp0)
        n_leaves = torch.zeros_like(depth)
        n_evals = 0
        ck_p = z0.new_zeros((self.max_tree_depth, c, z0.shape[1]))
        ck_sum = torch.zeros_like(ck_p)
        for j in range(self.max_tree_depth):
            active = ~done
            if not bool(active.any()):
                break
            forward = torch.rand_like(lp0) < 0.5
            step = torch.where(forward.unsqueeze(-1), eps, -eps)
            cur = torch.where(forward.view(c, 1, 1), right, left)
            sub_ok = active
            sub_log_w = neg_inf
            sub_sum = torch.zeros_like(p0)
            sprop, sprop_lp, sprop_h = cur, lp0, h0
            for i in range(2 ** j):
                stepping = sub_ok
                if i > 0 and not bool(stepping.any()):
                    break
                n_evals += 1
                z1, p1, lp1, g1 = leapfrog(self.logp_and_grad, cur[:, 0], cur[:, 1], cur[:, 2], step, inv_mass)
                new = torch.stack([z1, p1, g1], 1)
                h1 = -lp1 + kinetic(p1, inv_mass)
                delta = torch.nan_to_num(h1 - h0, nan=math.inf)
                div = stepping & (delta > self.divergence_threshold)
                ok = stepping & ~div
                sum_accept = sum_accept + torch.where(stepping, (-delta).clamp(max=0.0).exp(), zero)
                n_leaves = n_leaves + stepping.long()
                lw1 = torch.where(ok, -delta, neg_inf)
                new_log_w = torch.logaddexp(sub_log_w, lw1)
                take = ok & (torch.rand_like(lp0).log() < lw1 - new_log_w)
                take3 = take.view(c, 1, 1)
                sprop, sprop_lp, sprop_h = torch.where(take3, new, sprop), torch.where(take, lp1, sprop_lp), torch.where(take, h1, sprop_h)
                sub_log_w = torch.where(ok, new_log_w, sub_log_w)
                step2 = stepping.unsqueeze(-1)
                sub_sum = torch.where(step2, sub_sum + p1, sub_sum)
                if i % 2 == 0:
                    k = bin(i >> 1).count("1")
                    ck_p[k] = torch.where(step2, p1, ck_p[k])
                    ck_sum[k] = torch.where(step2, sub_sum, ck_sum[k])
                    sub_ok = ok
                else:
                    lo, hi = _checkpoint_range(i)
                    turning = is_turning(ck_p[lo:hi + 1], p1, sub_sum - ck_sum[lo:hi + 1] + ck_p[lo:hi + 1], inv_mass).any(0)
                    sub_ok = ok & ~turning
                cur = torch.where(stepping.view(c, 1, 1), new, cur)
                diverging = diverging | div
            good = active & sub_ok
            good3 = good.view(c, 1, 1)
            right = torch.where(good3 & forward.view(c, 1, 1), cur, right)
            left = torch.where(good3 & ~forward.view(c, 1, 1), cur, left)
            take = good & (torch.rand_like(lp0).log() < sub_log_w - log_w)
            prop, prop_lp, prop_h = torch.where(take.view(c, 1, 1), sprop, prop), torch.where(take, sprop_lp, prop_lp), torch.where(take, sprop_h, prop_h)
            moved = moved | take
            log_w = torch.where(good, torch.logaddexp(log_w, sub_log_w), log_w)
            p_sum = torch.where(good.unsqueeze(-1), p_sum + sub_sum, p_sum)
            depth = depth + good.long()
            done = done | (active & ~sub_ok) | (good & is_turning(left[:, 1], right[:, 1], p_sum, inv_mass))
        new_state = ChainState(prop[:, 0], prop_lp, prop[:, 2], state.step_size, inv_mass)
        info = StepInfo(
            accept_prob=sum_accept / n_leaves.clamp(min=1), accepted=moved, diverging=diverging,
            energy=prop_h, n_steps=n_leaves, tree_depth=depth, n_evals=n_evals,
        )
        return new_state, info
