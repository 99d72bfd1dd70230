"""Gibbs updates of finite discrete latent sites by enumerating their support, batched over chains.

Within MCMC the continuous latents move with a gradient kernel on the target conditioned on the
current discrete values (``UnconstrainedTarget.fixed``); then :class:`DiscreteGibbs` redraws
each discrete value from its full conditional. Each element of each discrete site is updated in
turn (a systematic scan, valid whatever the dependence between elements): the program is run
once for all ``K`` support values of that element and all ``C`` chains together (``K * C``
points), and the new value is drawn from the normalised joint over the ``K`` candidates.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional

import pyro
import torch

from ppl.errors import DiscreteLatentError
from ppl.handlers.improper import ImproperInitMessenger
from ppl.inference.program import Program
from ppl.inference.target import UnconstrainedTarget


def discrete_sites(program: Program) -> List[str]:
    """Names of the program's discrete latent sites, in program order."""
    return [name for name, s in program.latent_sites().items() if s.is_discrete]


class DiscreteGibbs:
    """Systematic-scan Gibbs sampler for the discrete sites ``names`` of ``target.program``.

    Each site must have a distribution with ``has_enumerate_support`` (Bernoulli, Categorical,
    Binomial with one total count, ...), scalar events and a support that does not change between
    runs; otherwise :class:`DiscreteLatentError` names the site. Values live in the target's
    ``fixed`` dict as batched tensors ``(C, *batched_shape)``; :meth:`step` replaces them.
    """

    def __init__(self, program: Program, names: List[str]) -> None:
        self.program = program
        self.names = list(names)
        trace, _ = self.program.run(1, ImproperInitMessenger())
        self.support: Dict[str, torch.Tensor] = {}
        for name in self.names:
            fn = trace.nodes[name]["fn"]
            if not getattr(fn, "has_enumerate_support", False):
                raise DiscreteLatentError(
                    f"latent site {name!r} is discrete with infinite support ({fn.support}); the MCMC engines "
                    "Gibbs-sample only finite discrete sites (Bernoulli, Categorical, Binomial, ...): "
                    "marginalise it out of the model, or use importance sampling / SMC")
            if len(fn.event_shape) > 0:
                raise DiscreteLatentError(
                    f"latent site {name!r} has a discrete distribution with event shape {tuple(fn.event_shape)}; "
                    "Gibbs enumeration supports scalar events only (use Categorical instead of OneHotCategorical)")
            try:
                values = fn.enumerate_support(expand=False).reshape(-1)
            except Exception as e:  # noqa: BLE001 - e.g. Binomial with varying total counts
                raise DiscreteLatentError(f"cannot enumerate the support of latent site {name!r}: {e}") from e
            self.support[name] = values

    # ------------------------------------------------------------------------------ values
    def initial_values(self, n: int, given: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """Batched starting values ``(n, *batched_shape)``: ``given`` (named shape, one or per chain) else prior draws."""
        given = dict(given or {})
        with torch.no_grad():
            trace, _ = self.program.run(n, ImproperInitMessenger())
        out = {}
        for name in self.names:
            info = self.program.sites[name]
            if name in given:
                v = torch.as_tensor(given[name], device=self.support[name].device).to(self.support[name].dtype)
                if tuple(v.shape) == tuple(info.shape):
                    v = v.expand((n,) + tuple(info.shape))
                elif tuple(v.shape) != (n,) + tuple(info.shape):
                    raise ValueError(f"init value for site {name!r} has shape {tuple(v.shape)}; expected "
                                     f"{tuple(info.shape)} or {(n,) + tuple(info.shape)}")
                if not bool(torch.isin(v, self.support[name]).all()):
                    raise ValueError(f"init value for site {name!r} is outside its support {info.support}")
                out[name] = info.to_batched(v.contiguous())
            else:
                v = trace.nodes[name]["value"]
                out[name] = info.to_batched(info.to_named(v.expand((n,) + tuple(info.batched_shape))).contiguous())
        return out

    def named(self, target: UnconstrainedTarget) -> Dict[str, torch.Tensor]:
        """The target's current discrete values in named shape ``(C, *shape)``."""
        return {name: self.program.sites[name].to_named(target.fixed[name]) for name in self.names}

    # ------------------------------------------------------------------------------ update
    @torch.no_grad()
    def step(self, target: UnconstrainedTarget, z: torch.Tensor,
             log_prob: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        """One systematic scan: redraw every element of every discrete site from its full conditional at ``z``.

        ``log_prob(points) -> (N,)`` evaluates the target at its current ``fixed`` values (default
        ``target.log_prob``; the driver passes its recorded :class:`Potential`).
        """
        log_prob = log_prob or target.log_prob
        c = z.shape[0]
        for name in self.names:
            info = self.program.sites[name]
            values = self.support[name]
            k = values.shape[0]
            flat = info.to_named(target.fixed[name]).reshape(c, -1).clone()
            zk = z.repeat(k, 1)  # (K*C, D), candidate-major
            cand_values = values.repeat_interleave(c)  # (K*C,)
            others = {o: v.repeat((k,) + (1,) * (v.dim() - 1)) for o, v in target.fixed.items() if o != name}
            for m in range(flat.shape[1]):
                cand = flat.repeat(k, 1)
                cand[:, m] = cand_values
                current = target.fixed
                target.fixed = dict(others, **{name: info.to_batched(cand.reshape((k * c,) + tuple(info.shape)))})
                try:
                    with pyro.validation_enabled(False):
                        lp = log_prob(zk).reshape(k, c).T  # (C, K)
                finally:
                    target.fixed = current
                lp = torch.nan_to_num(lp, nan=-float("inf"))
                ok = torch.isfinite(lp).any(-1)
                logits = torch.where(ok.unsqueeze(-1), lp, torch.zeros_like(lp))
                idx = torch.distributions.Categorical(logits=logits).sample()
                flat[:, m] = torch.where(ok, values[idx], flat[:, m])  # no finite candidate: keep the value
                target.fixed = dict(target.fixed, **{name: info.to_batched(flat.reshape((c,) + tuple(info.shape))).clone()})
