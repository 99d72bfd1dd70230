"""Training GFlowNets on an environment: on/off-policy batches, exploration, replay, local search.

:class:`Trainer` runs a loop over iterations (never over trajectories): roll out a batch with the
forward policy (epsilon-uniform and tempered exploration make it off-policy, which TB, DB and SubTB
allow), optionally add trajectories rebuilt from a reward-prioritised replay buffer and from local
search, take one optimiser step on the chosen loss. Progress via tqdm; checkpoint / resume.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
from tqdm.auto import tqdm

from ppl.inference.gfn.env import Env, Trajectories, sample_backward, sample_forward
from ppl.inference.gfn.losses import evaluate, gfn_loss, trajectory_log_probs
from ppl.inference.gfn.policy import Policy, backward_policy_fn
from ppl.inference.runtime import seeded


class AllRewardsInfiniteError(ValueError):
    """Every sampled trajectory has log reward -inf, so no loss can tell the sampler where to go."""


class ReplayBuffer:
    """Terminal objects with their log rewards; sampling prioritises high reward.

    Draws with probability proportional to ``exp(log R / temperature)`` mixed with a uniform
    fraction ``uniform``; duplicates are kept (a frequent high-reward object is simply likelier).
    """

    def __init__(self, capacity: int = 10_000, temperature: float = 1.0, uniform: float = 0.1) -> None:
        self.capacity, self.temperature, self.uniform = capacity, temperature, uniform
        self.states: Optional[torch.Tensor] = None
        self.log_reward: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return 0 if self.states is None else self.states.shape[0]

    def add(self, states: torch.Tensor, log_reward: torch.Tensor) -> None:
        ok = torch.isfinite(log_reward)
        states, log_reward = states[ok], log_reward[ok]
        if self.states is None:
            self.states, self.log_reward = states, log_reward
        else:
            self.states = torch.cat([self.states, states])
            self.log_reward = torch.cat([self.log_reward, log_reward])
        if len(self) > self.capacity:  # keep the best half, then the most recent
            keep_best = torch.topk(self.log_reward, self.capacity // 2).indices
            recent = torch.arange(len(self) - (self.capacity - self.capacity // 2), len(self), device=self.states.device)
            idx = torch.unique(torch.cat([keep_best, recent]))
            self.states, self.log_reward = self.states[idx], self.log_reward[idx]

    def sample(self, n: int, generator: Optional[torch.Generator] = None):
        logits = self.log_reward / self.temperature
        p = (1 - self.uniform) * torch.softmax(logits, 0) + self.uniform / len(self)
        idx = torch.multinomial(p, n, replacement=True, generator=generator)
        return self.states[idx], self.log_reward[idx]


def replace_neg_inf(log_reward: torch.Tensor, floor: Optional[float] = None) -> torch.Tensor:
    """-inf log rewards replaced by ``floor`` (default: 20 below the smallest finite one), finite ones kept.

    Clamping every reward at a fixed floor would flatten targets whose log rewards are all very negative.
    """
    finite = torch.isfinite(log_reward)
    if bool(finite.all()):
        return log_reward
    if floor is None:
        floor = float(log_reward[finite].min()) - 20.0
    return torch.where(finite, log_reward, torch.full_like(log_reward, floor))


@torch.no_grad()
def local_search(env: Env, policy: Policy, terminal: torch.Tensor, log_reward: torch.Tensor, back: int = 2,
                 generator: Optional[torch.Generator] = None):
    """Backtrack ``back`` steps with P_B, rebuild with P_F, accept by Metropolis-Hastings.

    The proposal x -> s -> x' has density P_B(x->s) P_F(s->x'); the move is accepted with
    probability min(1, R(x') P_B(x'->s) P_F(s->x) / (R(x) P_B(x->s) P_F(s->x'))), which leaves
    the reward distribution invariant. Returns (new terminals, their log rewards, acceptance rate).
    """
    bpf = backward_policy_fn(policy)
    old = sample_backward(env, terminal, log_reward, bpf, generator, steps=back)
    start = old.states[0]
    new = sample_forward(env, policy, start.shape[0], start=start, generator=generator)
    t_old, t_new = evaluate(env, policy, old), evaluate(env, policy, new)
    log_a = (new.log_reward + t_new.sum_log_pb() + t_old.sum_log_pf()
             - old.log_reward - t_old.sum_log_pb() - t_new.sum_log_pf())
    u = torch.rand(log_a.shape, device=log_a.device, generator=generator)
    acc = torch.log(u) < log_a
    x_new = torch.where(acc.view((-1,) + (1,) * (terminal.dim() - 1)), new.terminal(), terminal)
    lr = torch.where(acc, new.log_reward, old.log_reward)
    return x_new, lr, float(acc.float().mean())


@dataclass
class TrainConfig:
    """Settings of a training run (see :class:`Trainer`)."""

    loss: str = "tb"
    batch_size: int = 256
    lr: float = 1e-3
    lr_log_z: float = 0.1
    epsilon: float = 0.0           # epsilon-uniform exploration
    temperature: float = 1.0       # tempered exploration (policy logits / temperature)
    replay: int = 0                # replayed trajectories per batch (0: on-policy only)
    replay_capacity: int = 10_000
    local_search_every: int = 0    # 0: no local search
    local_search_back: int = 2
    lamda: float = 0.9             # SubTB(lambda)
    log_reward_min: Optional[float] = None  # -inf log rewards become this (None: batch min finite - 20)
    init_log_z: bool = True        # start log Z at the first batch's mean log R + log P_B - log P_F
    eval_every: int = 0            # exact L1 every k iterations on enumerable envs (0: never)
    checkpoint: Optional[str] = None
    checkpoint_every: int = 0
    progress: bool = False
    history: Dict[str, List[float]] = field(default_factory=dict)


def adam(groups) -> torch.optim.Adam:
    """Adam, fused into one kernel per step where torch supports it (about 2.5x faster on CPU for an MLP)."""
    try:
        return torch.optim.Adam(groups, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a torch or parameter type without the fused kernel
        return torch.optim.Adam(groups)


class Trainer:
    """Trains a :class:`Policy` on an :class:`Env` with one of the GFlowNet losses."""

    def __init__(self, env: Env, policy: Optional[Policy] = None, config: Optional[TrainConfig] = None,
                 seed: Optional[int] = 0, hidden: int = 256, layers: int = 2, learn_pb: bool = False) -> None:
        self.env, self.config = env, config or TrainConfig()
        self.device = env.device
        with seeded(seed):  # network initialisation, without touching the caller's RNG
            self.policy = (policy or Policy(env.encoding_dim, env.n_actions, env.n_bactions, hidden, layers, learn_pb)).to(self.device)
        c = self.config
        self.opt = adam(self.policy.parameter_groups(c.lr, c.lr_log_z))
        self.generator = torch.Generator(device=self.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        self.buffer = ReplayBuffer(c.replay_capacity)
        self.iteration = 0
        self.history: Dict[str, List[float]] = {"loss": [], "log_z": []}
        self.elapsed = 0.0
        if c.checkpoint and Path(c.checkpoint).exists():
            self.load(c.checkpoint)

    def batch(self) -> Trajectories:
        """One training batch: on-policy (or explored) rollouts, plus replayed and local-search ones."""
        c, env = self.config, self.env
        # a batch of the rollout's own trajectories is scored from the rollout's forward pass (replayed)
        own = not c.replay
        tr = sample_forward(env, self.policy, c.batch_size, c.epsilon, c.temperature, self.generator, keep_inputs=own)
        if own and c.loss in ("tb", "vargrad"):  # only the sums over each trajectory are needed
            tr.log_pf_sum, tr.log_pb_sum = trajectory_log_probs(env, self.policy, tr)
        if not bool(torch.isfinite(tr.log_reward).any()):
            raise AllRewardsInfiniteError(
                f"all {tr.n} sampled trajectories of {type(env).__name__} have log reward -inf: the sampler "
                "never reaches an object with positive reward, so the loss has nothing to learn from. "
                "Explore more (epsilon=0.1..0.5 or temperature>1), seed a replay buffer with valid objects "
                "(replay>0, buffer.add), or give invalid objects a small positive reward instead of zero."
            )
        tr.log_reward = replace_neg_inf(tr.log_reward, c.log_reward_min)
        if c.replay or c.local_search_every:
            self.buffer.add(tr.terminal(), tr.log_reward)
        if c.local_search_every and self.iteration % c.local_search_every == 0:
            x, lr, acc = local_search(env, self.policy, tr.terminal(), tr.log_reward, c.local_search_back, self.generator)
            self.buffer.add(x, lr)
            self.history.setdefault("ls_accept", []).append(acc)
        if c.replay and len(self.buffer):
            x, lr = self.buffer.sample(c.replay, self.generator)
            tr = tr.cat(sample_backward(env, x, lr, backward_policy_fn(self.policy), self.generator))
        return tr

    def step(self) -> float:
        tr = self.batch()
        if self.iteration == 0 and self.config.init_log_z:
            self._init_log_z(tr)
        if tr.log_pf_sum is not None:  # TB / VarGrad scored in the batch pass
            d = tr.log_pf_sum - tr.log_reward - tr.log_pb_sum
            loss = (d + self.policy.log_z).pow(2).mean() if self.config.loss == "tb" else (d - d.mean()).pow(2).mean()
        else:
            loss = gfn_loss(self.config.loss, self.env, self.policy, tr, self.config.lamda)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"the {self.config.loss} loss is {float(loss)} at iteration {self.iteration}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.iteration += 1
        return loss.item()

    @torch.no_grad()
    def _init_log_z(self, tr: Trajectories) -> None:
        """Start log Z at the first batch's ELBO-type estimate: rewards can be far from 1 (log Z far from 0)."""
        t = evaluate(self.env, self.policy, tr)
        self.policy.log_z.fill_(float((tr.log_reward + t.sum_log_pb() - t.sum_log_pf()).mean()))

    def train(self, iterations: int, until_l1: Optional[float] = None) -> "Trainer":
        """Run ``iterations`` optimiser steps (or stop early once the exact L1 < ``until_l1``)."""
        from ppl.inference.gfn.exact import l1_to_target

        c = self.config
        bar = tqdm(range(iterations), desc=f"gfn[{c.loss}]", disable=not c.progress)
        start = time.perf_counter()
        for _ in bar:
            loss = self.step()
            self.history["loss"].append(loss)
            self.history["log_z"].append(self.policy.log_z.item())
            if c.eval_every and self.iteration % c.eval_every == 0:
                l1 = l1_to_target(self.env, self.policy)
                self.history.setdefault("l1", []).append(l1)
                self.history.setdefault("l1_iter", []).append(self.iteration)
                self.history.setdefault("l1_time", []).append(self.elapsed + time.perf_counter() - start)
                if until_l1 is not None and l1 < until_l1:
                    break
            if c.progress:
                bar.set_postfix(loss=f"{loss:.3g}", log_z=f"{self.policy.log_z.item():.3f}")
            if c.checkpoint and c.checkpoint_every and self.iteration % c.checkpoint_every == 0:
                self.save(c.checkpoint)
        self.elapsed += time.perf_counter() - start
        if c.checkpoint:
            self.save(c.checkpoint)
        return self

    # -- checkpoint / resume ---------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "opt": self.opt.state_dict(), "iteration": self.iteration,
                "history": self.history, "generator": self.generator.get_state(), "elapsed": self.elapsed,
                "buffer": (self.buffer.states, self.buffer.log_reward)}

    def save(self, path: Union[str, Path]) -> None:
        """Write the policy, optimiser, RNG, buffer and history (atomically: a crash keeps the last one)."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)

    def load(self, path: Union[str, Path]) -> None:
        sd = torch.load(path, map_location=self.device, weights_only=False)
        self.policy.load_state_dict(sd["policy"])
        self.opt.load_state_dict(sd["opt"])
        self.iteration, self.history, self.elapsed = sd["iteration"], sd["history"], sd["elapsed"]
        self.generator.set_state(sd["generator"])
        self.buffer.states, self.buffer.log_reward = sd["buffer"]


def train(env: Env, iterations: int = 1000, seed: Optional[int] = 0, hidden: int = 256, layers: int = 2,
          learn_pb: bool = False, **config) -> Trainer:
    """Build a :class:`Trainer` for ``env`` with ``TrainConfig(**config)`` and train it."""
    return Trainer(env, None, TrainConfig(**config), seed, hidden, layers, learn_pb).train(iterations)
