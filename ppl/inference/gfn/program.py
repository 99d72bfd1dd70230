"""A Pyro program as a GFlowNet environment: a learned policy draws each latent site in program order.

The program's latent sites are the steps of a trajectory (a tree: each partial trace has one
parent, so P_B = 1) and its log joint (prior + beta * likelihood, plus the log-Jacobian of
continuous sites drawn in unconstrained space) is the log reward. :class:`PolicyMessenger` runs
inside ``Program.run``, so one run draws all N trajectories as a batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from pyro.poutine.messenger import Messenger
from torch import nn
from torch.distributions import biject_to

from ppl.handlers._sites import is_latent
from ppl.inference.gfn.policy import mlp
from ppl.errors import ModelError, VariableStructureError
from ppl.inference.program import Program



@dataclass
class SiteSlot:
    """Where one latent site lives in the policy: its encoding slice and its head."""

    name: str
    discrete: bool
    batched_shape: torch.Size
    m: int                     # elements per particle (unconstrained elements for continuous sites)
    support_values: Optional[torch.Tensor]  # (k,) for discrete sites
    unconstrained_shape: Optional[torch.Size]  # per particle, continuous sites
    enc_start: int
    enc_size: int


def _layout(program: Program) -> List[SiteSlot]:
    trace = program.trace_unbatched()
    slots, start = [], 0
    for name, info in program.latent_sites().items():
        fn = trace.nodes[name]["fn"]
        if info.is_discrete:
            if not fn.has_enumerate_support or info.event_dim:
                raise ModelError(f"latent site {name!r} is discrete without a finite enumerable scalar support "
                                 f"({fn.support}); the gfn engine needs finite supports for discrete sites")
            vals = torch.unique(fn.enumerate_support(expand=False).reshape(-1))
            m = max(1, info.shape.numel())
            size = m * vals.numel()
            slots.append(SiteSlot(name, True, info.batched_shape, m, vals, None, start, size))
        else:
            x = trace.nodes[name]["value"]
            u = biject_to(fn.support).inv(x)
            nb = len(info.batched_shape) - info.event_dim
            u_event = tuple(u.shape[u.dim() - info.event_dim:]) if info.event_dim else ()
            ushape = torch.Size(tuple(info.batched_shape[:nb]) + u_event)
            m = max(1, ushape.numel())
            slots.append(SiteSlot(name, False, info.batched_shape, m, None, ushape, start, m))
        start += slots[-1].enc_size
    return slots


class ProgramPolicy(nn.Module):
    """Autoregressive policy over a program's latent sites: a shared trunk on the partial-trace
    encoding, one head per site (logits over the enumerated support, or a Gaussian in
    unconstrained space) and a log-flow head (log F of a partial trace, for DB / SubTB). Elements
    of one vector site are conditionally independent given the earlier sites. ``log_z`` is the
    learned log partition function."""

    def __init__(self, program: Program, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.slots = _layout(program)
        self.index = {s.name: i for i, s in enumerate(self.slots)}
        self.enc_dim = sum(s.enc_size for s in self.slots) + len(self.slots)
        self.trunk = mlp(self.enc_dim, hidden, hidden, max(1, layers - 1))
        self.heads = nn.ModuleList(
            nn.Linear(hidden, s.m * (s.support_values.numel() if s.discrete else 2)) for s in self.slots)
        self.flow = nn.Linear(hidden, 1)
        self.log_z = nn.Parameter(torch.tensor(0.0))

    def parameter_groups(self, lr: float = 1e-3, lr_log_z: float = 0.1):
        net = [p for n, p in self.named_parameters() if n != "log_z"]
        return [{"params": net, "lr": lr}, {"params": [self.log_z], "lr": lr_log_z}]

    def pack(self, values: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The latent sites' values (name -> ``(n, *shape)``) as one float64 row per trajectory, in site order
        (a replay buffer stores terminal objects this way; discrete values are small integers, exact in float64)."""
        n = next(iter(values.values())).shape[0]
        return torch.cat([values[s.name].reshape(n, -1).to(torch.float64) for s in self.slots], 1)

    def unpack(self, rows: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Inverse of :meth:`pack`: discrete sites in their support's dtype, continuous ones in the policy's."""
        n, out, start = rows.shape[0], {}, 0
        dtype = self.log_z.dtype
        for s in self.slots:
            size = max(1, s.batched_shape.numel())
            v = rows[:, start:start + size].reshape((n,) + tuple(s.batched_shape))
            out[s.name] = v.to(s.support_values.dtype if s.discrete else dtype)
            start += size
        return out


class PolicyMessenger(Messenger):
    """Draws each latent site from the policy given the partial trace; records log P_F per step.

    ``values`` (name -> batched value) forces sites to given values (their log P_F is still
    scored), which is how target samples or local-search proposals are evaluated; sites missing
    from ``values`` are drawn. After the run, ``log_pf`` ``(n,)`` (with its autograd graph),
    ``log_jacobian`` ``(n,)``, and per site in program order ``steps`` (log P_F of the step),
    ``log_flows`` (the flow head at the partial trace the site is drawn from) and ``jacobians``
    are available. ``epsilon`` mixes uniform choices into discrete sites and
    ``temperature`` widens every site's distribution (off-policy exploration).
    """

    holds_particle_values = True  # batched per-particle state, no per-particle form: vectorized path only

    def __init__(self, policy: ProgramPolicy, n: int, values: Optional[Dict[str, torch.Tensor]] = None,
                 epsilon: float = 0.0, temperature: float = 1.0) -> None:
        super().__init__()
        self.policy, self.n, self.values = policy, n, dict(values or {})
        self.epsilon, self.temperature = epsilon, temperature

    def __enter__(self):
        p = next(self.policy.parameters())
        self.enc = torch.zeros(self.n, self.policy.enc_dim, device=p.device, dtype=p.dtype)
        self.log_pf = torch.zeros(self.n, device=p.device, dtype=p.dtype)
        self.log_jacobian = torch.zeros(self.n, device=p.device, dtype=p.dtype)
        self.steps: Dict[str, torch.Tensor] = {}
        self.log_flows: Dict[str, torch.Tensor] = {}
        self.jacobians: Dict[str, torch.Tensor] = {}
        self.seen: List[str] = []
        return super().__enter__()

    def _process_message(self, msg) -> None:
        if not is_latent(msg) or msg["done"]:
            return
        name = msg["name"]
        if name not in self.policy.index:
            raise VariableStructureError(
                f"latent site {name!r} did not appear when the program was analysed: the number or names of "
                "sites vary between runs. A GFlowNet over programs needs a fixed set of sites; write optional "
                "choices as always-present sites masked with poutine.mask / pyro.poutine.mask(mask=...)")
        i = self.policy.index[name]
        slot = self.policy.slots[i]
        h = self.policy.trunk(self.enc)
        out = self.policy.heads[i](h)
        n = self.n
        fn = msg["fn"]
        given = self.values.get(name)
        if slot.discrete:
            vals = slot.support_values.to(self.enc.device)
            k = vals.numel()
            logits = out.view(n, slot.m, k)
            probe = vals.to(fn.support_dtype if hasattr(fn, "support_dtype") else vals.dtype)
            lp_prior = fn.log_prob(probe.view((k,) + (1,) * len(fn.batch_shape)))
            possible = lp_prior > float("-inf")
            if isinstance(fn, torch.distributions.Categorical):  # zero probs are clamped, not -inf, in log_prob
                possible = possible & (fn.probs.movedim(-1, 0) > 0)
            mask = possible.expand((k, n) + tuple(slot.batched_shape)).reshape(k, n, slot.m).permute(1, 2, 0)
            logp = torch.log_softmax(logits.masked_fill(~mask, float("-inf")), -1)
            if given is None:
                with torch.no_grad():
                    q = logp / self.temperature
                    q = torch.log_softmax(q, -1)
                    if self.epsilon > 0:
                        uni = torch.log_softmax(torch.zeros_like(q).masked_fill(~mask, float("-inf")), -1)
                        q = torch.logaddexp(q + torch.log1p(torch.tensor(-self.epsilon)),
                                            uni + torch.log(torch.tensor(self.epsilon)))
                    idx = torch.distributions.Categorical(logits=q).sample()
            else:
                g = given.reshape(n, slot.m, 1).to(vals.dtype)
                idx = (g == vals.view(1, 1, k)).float().argmax(-1)
            step = logp.gather(-1, idx.unsqueeze(-1)).squeeze(-1).sum(-1)
            value = vals[idx].reshape((n,) + tuple(slot.batched_shape))
            if given is not None:
                value = given.reshape(value.shape).to(value.dtype)
            one_hot = torch.nn.functional.one_hot(idx, k).reshape(n, -1).to(self.enc.dtype)
            self.enc = torch.cat([self.enc[:, :slot.enc_start], one_hot, self.enc[:, slot.enc_start + slot.enc_size:]], 1)
        else:
            mu, log_sd = out.view(n, slot.m, 2).unbind(-1)
            log_sd = log_sd.clamp(-7.0, 5.0)
            t = biject_to(fn.support)
            if given is None:
                with torch.no_grad():
                    u = mu + torch.randn_like(mu) * log_sd.exp() * self.temperature
            else:
                u = t.inv(given).reshape(n, slot.m)
            u = u.detach()
            step = (-0.5 * ((u - mu) / log_sd.exp()) ** 2 - log_sd - 0.9189385332046727).sum(-1)
            u_shaped = u.reshape((n,) + tuple(slot.unconstrained_shape))
            value = t(u_shaped)
            ld = t.log_abs_det_jacobian(u_shaped, value).reshape(n, -1).sum(-1)
            self.jacobians[name] = ld
            self.log_jacobian = self.log_jacobian + ld
            value = value.reshape((n,) + tuple(slot.batched_shape))
            self.enc = torch.cat([self.enc[:, :slot.enc_start], u, self.enc[:, slot.enc_start + slot.enc_size:]], 1)
        flag = self.policy.enc_dim - len(self.policy.slots) + i
        self.enc = torch.cat([self.enc[:, :flag], torch.ones_like(self.enc[:, :1]), self.enc[:, flag + 1:]], 1)
        self.log_pf = self.log_pf + step
        self.steps[name] = step
        self.log_flows[name] = self.policy.flow(h).squeeze(-1)
        self.seen.append(name)
        msg["value"] = value
        msg["done"] = True

    def check_complete(self) -> None:
        """Raise if a site of the layout was skipped in this run."""
        missing = [s.name for s in self.policy.slots if s.name not in self.steps]
        if missing:
            raise VariableStructureError(
                f"latent site(s) {missing} were not drawn in this run but were present when the program was "
                "analysed: the number of sites varies between runs. Keep every site present and mask the unused "
                "ones (pyro.poutine.mask) so that every trajectory has the same steps")


def run_policy(program: Program, policy: ProgramPolicy, n: int, beta: float = 1.0,
               values: Optional[Dict[str, torch.Tensor]] = None, epsilon: float = 0.0,
               temperature: float = 1.0) -> Tuple[object, torch.Tensor, torch.Tensor, object, PolicyMessenger]:
    """One batched run of the program under the policy: (trace, log P_F, log R(beta), density, messenger).

    log R = prior + beta * likelihood + log-Jacobian of the continuous sites' unconstrained draws.
    """
    pm = PolicyMessenger(policy, n, values, epsilon, temperature)
    trace, density = program.run(n, pm)
    pm.check_complete()
    zero = torch.zeros(n, device=pm.log_pf.device, dtype=pm.log_pf.dtype)
    prior, lik = density.get("prior"), density.get("likelihood")
    log_r = (zero + prior) + beta * (zero + lik) + pm.log_jacobian
    return trace, pm.log_pf, log_r.detach(), density, pm
