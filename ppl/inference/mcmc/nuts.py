"""The No-U-Turn Sampler batched over chains: multinomial trajectory sampling, generalised U-turn criterion.

Every chain builds its own tree (own directions, own depth); the batch doubles all trees in
lockstep and a chain whose tree has stopped (U-turn, divergence) waits masked until every chain is
done. Subtrees are built iteratively with momentum checkpoints (as NumPyro's iterative NUTS), so
the U-turn checks inside a subtree need memory O(max_depth), not O(2^depth). ``StepInfo.n_evals``
is the lockstep cost (batched evaluations actually run), ``n_steps`` each chain's useful share.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional, Tuple, Union

import torch

from ppl.inference.mcmc.fusion import flatten, runner
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


@functools.lru_cache(maxsize=4096)
def _leaf_masks(i: int, k: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(checkpoint slot an even leaf ``i`` writes, checkpoints an odd leaf ``i`` checks), as (k,) masks."""
    slots = torch.arange(k, device=device)
    if i % 2 == 0:
        return slots == bin(i >> 1).count("1"), torch.zeros(k, dtype=torch.bool, device=device)
    lo, hi = _checkpoint_range(i)
    return torch.zeros(k, dtype=torch.bool, device=device), (slots >= lo) & (slots <= hi)


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
        c, d = z0.shape
        k = self.max_tree_depth
        p0 = sample_momentum(inv_mass, z0)
        h0 = -lp0 + kinetic(p0, inv_mass)
        eps = state.step_size.unsqueeze(-1)
        threshold = torch.tensor(self.divergence_threshold, dtype=z0.dtype, device=z0.device)
        # points are packed as (C, 3, D) = (z, p, grad) so that one torch.where moves all three
        start = torch.stack([z0, p0, g0], 1)
        tree = Tree(start, start, start, lp0, h0, torch.zeros_like(lp0), p0,
                    torch.zeros(c, dtype=torch.long, device=z0.device), torch.zeros(c, dtype=torch.bool, device=z0.device))
        diverging = torch.zeros_like(tree.done)
        moved = torch.zeros_like(tree.done)
        sum_accept = torch.zeros_like(lp0)
        n_leaves = torch.zeros_like(tree.depth)
        n_evals = 0
        ck_p = z0.new_zeros((k, c, d))
        ck_sum = torch.zeros_like(ck_p)
        runners = {}

        def run(name, fn, args):
            if name not in runners:  # one lookup per transition; the recorded graph is fixed for these shapes
                runners[name] = runner(self.logp_and_grad, name, fn, args, z0)
            return runners[name](*flatten(args))

        for j in range(k):
            active = ~tree.done
            if not bool(active.any()):
                break
            out = run("nuts_begin", _begin_subtree, (tree, active, eps, h0, torch.rand_like(lp0)))
            cur, step, forward, sub = out[0], out[1], out[2], Subtree(*out[3:])
            for i in range(2 ** j):
                if i > 0 and not bool(sub.ok.any()):
                    break
                n_evals += 1
                write, check = _leaf_masks(i, k, z0.device)
                out = run("nuts_leaf", _leaf, (cur, h0, sub, ck_p, ck_sum, sum_accept, n_leaves, diverging,
                                                step, inv_mass, write, check, torch.rand_like(lp0), threshold))
                cur, sub, (ck_p, ck_sum, sum_accept, n_leaves, diverging) = out[0], Subtree(*out[1:7]), out[7:]
            out = run("nuts_merge", _merge_subtree, (tree, sub, cur, forward, active, moved, inv_mass,
                                                     torch.rand_like(lp0)))
            tree, moved = Tree(*out[:-1]), out[-1]
        prop = tree.prop
        new_state = ChainState(prop[:, 0], tree.prop_lp, prop[:, 2], state.step_size, inv_mass)
        info = StepInfo(
            accept_prob=sum_accept / n_leaves.clamp(min=1), accepted=moved, diverging=diverging,
            energy=tree.prop_h, n_steps=n_leaves, tree_depth=tree.depth, n_evals=n_evals,
        )
        return new_state, info


class Tree(NamedTuple):
    """One NUTS trajectory per chain: its two ends and proposal (packed (C, 3, D) points), weights, depth."""

    left: torch.Tensor
    right: torch.Tensor
    prop: torch.Tensor
    prop_lp: torch.Tensor
    prop_h: torch.Tensor
    log_w: torch.Tensor      # log sum of the tree's weights, relative to exp(-h0)
    p_sum: torch.Tensor
    depth: torch.Tensor
    done: torch.Tensor


class Subtree(NamedTuple):
    """The subtree being built in one doubling: proposal, log weight, momentum sum, still-valid flag."""

    prop: torch.Tensor
    prop_lp: torch.Tensor
    prop_h: torch.Tensor
    log_w: torch.Tensor
    p_sum: torch.Tensor
    ok: torch.Tensor


# The three pieces of a NUTS transition below are pure functions of tensors (random numbers passed
# in), so a Potential can record each, with the leapfrog, as one graph: the Python per leaf is then
# one call instead of some forty tensor operations.

def _begin_subtree(lf, tree: Tree, active: torch.Tensor, eps: torch.Tensor, h0: torch.Tensor, u: torch.Tensor):
    """Pick each chain's direction and start an empty subtree (weight zero) at that end of its trajectory."""
    del lf
    c = u.shape[0]
    forward = u < 0.5
    step = torch.where(forward.unsqueeze(-1), eps, -eps)
    cur = torch.where(forward.view(c, 1, 1), tree.right, tree.left)
    # the proposal placeholder is replaced by the subtree's first valid leaf (whose weight ratio is 1)
    empty = torch.full_like(h0, -math.inf)
    return (cur, step, forward, cur, tree.prop_lp, h0, empty, torch.zeros_like(cur[:, 1]), active)


def _leaf(lf, cur, h0, sub: Subtree, ck_p, ck_sum, sum_accept, n_leaves, diverging, step, inv_mass,
          write, check, u, threshold):
    """One leapfrog step of the chains still building their subtree, with multinomial sampling and U-turn checks.

    ``write`` (K,) marks the checkpoint slot an even leaf stores; ``check`` (K,) the checkpoints an
    odd leaf tests its sub-subtrees against (all False otherwise).
    """
    c = cur.shape[0]
    stepping = sub.ok
    z1, p1, lp1, g1 = lf(cur[:, 0], cur[:, 1], cur[:, 2], step, inv_mass)
    new = torch.stack([z1, p1, g1], 1)
    h1 = -lp1 + kinetic(p1, inv_mass)
    delta = torch.nan_to_num(h1 - h0, nan=math.inf)
    div = stepping & (delta > threshold)
    ok = stepping & ~div
    sum_accept = sum_accept + torch.where(stepping, (-delta).clamp(max=0.0).exp(), torch.zeros_like(delta))
    n_leaves = n_leaves + stepping.long()
    lw1 = torch.where(ok, -delta, torch.full_like(delta, -math.inf))
    new_log_w = torch.logaddexp(sub.log_w, lw1)
    take = ok & (u.log() < lw1 - new_log_w)
    prop = torch.where(take.view(c, 1, 1), new, sub.prop)
    prop_lp = torch.where(take, lp1, sub.prop_lp)
    prop_h = torch.where(take, h1, sub.prop_h)
    log_w = torch.where(ok, new_log_w, sub.log_w)
    step2 = stepping.unsqueeze(-1)
    p_sum = torch.where(step2, sub.p_sum + p1, sub.p_sum)
    slot = write.view(-1, 1, 1) & step2
    ck_p = torch.where(slot, p1, ck_p)
    ck_sum = torch.where(slot, p_sum, ck_sum)
    turning = (is_turning(ck_p, p1, p_sum - ck_sum + ck_p, inv_mass) & check.view(-1, 1)).any(0)
    cur = torch.where(stepping.view(c, 1, 1), new, cur)
    return (cur, prop, prop_lp, prop_h, log_w, p_sum, ok & ~turning,
            ck_p, ck_sum, sum_accept, n_leaves, diverging | div)


def _merge_subtree(lf, tree: Tree, sub: Subtree, cur, forward, active, moved, inv_mass, u):
    """Join a finished subtree to its trajectory (biased progressive sampling) and test the whole for a U-turn."""
    del lf
    c = cur.shape[0]
    good = active & sub.ok
    good3 = good.view(c, 1, 1)
    right = torch.where(good3 & forward.view(c, 1, 1), cur, tree.right)
    left = torch.where(good3 & ~forward.view(c, 1, 1), cur, tree.left)
    take = good & (u.log() < sub.log_w - tree.log_w)
    prop = torch.where(take.view(c, 1, 1), sub.prop, tree.prop)
    prop_lp = torch.where(take, sub.prop_lp, tree.prop_lp)
    prop_h = torch.where(take, sub.prop_h, tree.prop_h)
    log_w = torch.where(good, torch.logaddexp(tree.log_w, sub.log_w), tree.log_w)
    p_sum = torch.where(good.unsqueeze(-1), tree.p_sum + sub.p_sum, tree.p_sum)
    depth = tree.depth + good.long()
    done = tree.done | (active & ~sub.ok) | (good & is_turning(left[:, 1], right[:, 1], p_sum, inv_mass))
    return (left, right, prop, prop_lp, prop_h, log_w, p_sum, depth, done, moved | take)
