"""A GFlowNet policy over a discrete environment as the proposal of an SMC sampler, with unbiased log Z.

The path-space target is pi(tau) = R(x) P_B(tau | x) / Z over complete trajectories
tau = (s_0 -> ... -> x -> stop). Each SMC step takes one forward action per running particle,
drawn from P_F, and weighs it by

    move s -> s':  G = psi(s') P_B(s | s') / (psi(s) P_F(s' | s))
    stop at x:     G = R(x) / (psi(x) P_F(stop | x))

(a particle that has stopped keeps G = 1). Whatever the twist psi, the product of the G along a
trajectory is R(x) P_B(tau | x) / P_F(tau), the importance weight (psi(s_0) cancels), so the SMC
estimate of Z = sum_x R(x) is unbiased. The twist decides how informative the resampling in
between is: ``twist="flow"`` uses the policy's state flow, psi(s) = F(s), which a detailed- or
sub-trajectory-balance policy learns (at their optimum every G is 1: zero variance);
``twist="none"`` (psi = 1) resamples on the path weights P_B / P_F alone; a callable
``log_psi(states) -> (n,)`` supplies any other (e.g. a forward-looking flow plus the state's
partial log reward). Resampling happens between steps, so particles that have stopped and ones
still running are resampled together; the result is an
:class:`~ppl.inference.smc.feynman_kac.SMCOutput` whose ``state["s"]`` are the terminal objects.
"""
from __future__ import annotations

import math
from typing import Callable, Union

import torch

from ppl.inference.gfn.env import Env, distinct_states, masked_log_softmax, sample_actions
from ppl.inference.runtime import Seed
from ppl.inference.smc.feynman_kac import FeynmanKac, SMCOutput, run_smc

Twist = Union[str, Callable[[torch.Tensor], torch.Tensor]]


class PolicyFK(FeynmanKac):
    """Feynman-Kac model of a policy on ``env``: state ``{"s", "done", "log_psi"}``, one action per step.

    ``policy`` is a :class:`~ppl.inference.gfn.policy.Policy` (forward logits, optional learned
    backward logits, log-flow head). There are ``env.max_steps`` steps, enough for every
    trajectory to stop.
    """

    def __init__(self, env: Env, policy, twist: Twist = "none") -> None:
        if not callable(twist) and twist not in ("flow", "none"):
            raise ValueError(f"twist must be 'flow', 'none' or a callable log_psi(states), got {twist!r}")
        self.env, self.policy, self.twist = env, policy, twist
        self.num_steps = int(env.max_steps)
        self.dtype = next(iter(policy.parameters()), torch.empty(())).dtype

    def _heads(self, states: torch.Tensor):
        """(forward logits, backward logits or None, log-flow) per row, one network pass per distinct state."""
        distinct, inverse = distinct_states(states, key=self.env.state_key(states))
        out = self.policy(self.env.encode(distinct))
        if inverse is not None:
            out = out.index_select(0, inverse)
        return self.policy.split(out)

    def _log_psi(self, states: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        if self.twist == "none":
            return torch.zeros_like(flow)
        if self.twist == "flow":
            return flow
        return self.twist(states).to(flow.dtype)

    def _act(self, s: torch.Tensor, done: torch.Tensor, log_psi: torch.Tensor):
        env = self.env
        n = s.shape[0]
        log_g = torch.zeros(n, dtype=log_psi.dtype, device=s.device)
        active = (~done).nonzero().squeeze(1)
        if active.numel() == 0:
            return {"s": s, "done": done, "log_psi": log_psi}, log_g
        sa = s.index_select(0, active)
        f_logits, _, _ = self._heads(sa)
        fmask = env.forward_mask(sa)
        log_pf_all = masked_log_softmax(f_logits, fmask)
        a = sample_actions(log_pf_all, fmask)
        log_pf = log_pf_all.gather(1, a.unsqueeze(1)).squeeze(1)
        stop = a == env.stop
        stay = (-1,) + (1,) * (s.dim() - 1)
        nxt = torch.where(stop.view(stay), sa, env.step(sa, a))  # step() may return anything on stop rows
        # the network at s' only when the twist is its flow or P_B is learned (uniform P_B, psi = 1: no pass)
        b_logits, flow = None, None
        if self.twist == "flow" or getattr(self.policy, "learn_pb", False):
            _, b_logits, flow = self._heads(nxt)
        psi_prev = log_psi.index_select(0, active)
        # a move: psi(s') P_B(s | s') / (psi(s) P_F(s' | s))
        bmask = env.backward_mask(nxt)
        b_logits = torch.zeros(bmask.shape, dtype=log_pf.dtype, device=s.device) if b_logits is None else b_logits
        log_pb_all = masked_log_softmax(b_logits, bmask)
        back = env.backward_action(sa, a).clamp(min=0)  # (stop rows: unused)
        log_pb = log_pb_all.gather(1, back.unsqueeze(1)).squeeze(1)
        psi_next = self._log_psi(nxt, torch.zeros_like(log_pf) if flow is None else flow)
        moved = psi_next + log_pb - log_pf - psi_prev
        # a stop: R(x) / (psi(x) P_F(stop | x)); the twist of a stopped particle is spent
        ended = stop.nonzero().squeeze(1)
        log_r = torch.zeros_like(log_pf).index_copy(0, ended, env.log_reward(sa.index_select(0, ended)).to(log_pf.dtype))
        g = torch.where(stop, log_r - log_pf - psi_prev, moved)
        log_g = log_g.index_copy(0, active, torch.nan_to_num(g, nan=-math.inf))
        s = s.index_copy(0, active, nxt)
        done = done.index_copy(0, active, stop)
        log_psi = log_psi.index_copy(0, active, torch.where(stop, torch.zeros_like(psi_next), psi_next))
        return {"s": s, "done": done, "log_psi": log_psi}, log_g

    @torch.no_grad()
    def init(self, n: int):
        s = self.env.initial(n)
        done = torch.zeros(n, dtype=torch.bool, device=s.device)
        log_psi = torch.zeros(n, dtype=self.dtype, device=s.device)  # psi(s_0) cancels
        return self._act(s, done, log_psi)

    @torch.no_grad()
    def step(self, t: int, state):
        return self._act(state["s"], state["done"], state["log_psi"])


def policy_smc(env: Env, policy, particles: int = 1024, *, twist: Twist = "none", resampling: str = "systematic",
               ess_threshold: float = 0.5, systems: int = 1, seed: Seed = None) -> SMCOutput:
    """SMC with ``policy``'s P_F as proposal on ``env``; ``out.log_evidence`` estimates log Z (unbiased in Z).

    ``out.state["s"]`` holds the terminal objects with weights ``out.normalized_weights``. Use
    ``twist="flow"`` with a policy trained by a flow loss (db, subtb); a trajectory-balance policy's
    flow head is untrained, and ``twist="none"`` is then the right choice.
    """
    if int(particles) < 1:
        raise ValueError(f"particles must be a positive integer, got {particles!r}")
    out = run_smc(PolicyFK(env, policy, twist), int(particles), systems=systems, resampling=resampling,
                  ess_threshold=ess_threshold, keep_history=False, seed=seed, device=env.device)
    if not bool(out.state["done"].all()):
        raise RuntimeError(f"{type(env).__name__}: trajectories did not stop within {env.max_steps} steps; "
                           "check max_steps and the stop mask")
    return out
