"""A proper reference program for tempered SMC, fitted to draws: Gaussians in each latent's unconstrained space.

Tempering from the prior needs a prior that can be sampled. A model with flat (improper) priors
has none, and a vague prior makes the first tempering stages slow. The geometric path
ref^(1-beta) x model^beta of :func:`~ppl.inference.smc.tempered_smc` works from any proper
reference with the model's latent sites and no observations; :func:`gaussian_reference` builds
one from draws (a pilot run of any engine, or a VI fit): every latent element gets an independent
Normal in its unconstrained space, centred at the draws' mean there, with their sd times
``inflate``, mapped back through the site's own bijection (dependent supports included, since the
support is read at run time). The path is exact for any reference; a good one only makes the
tempering shorter.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Union

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch.distributions import biject_to, constraints

from ppl.inference.program import Program
from ppl.inference.result import Result
from ppl.inference.target import UnconstrainedTarget


class _OnSupport(dist.TransformedDistribution):
    """A transformed base that reports the site's own support.

    ``biject_to`` often returns a composition ending in an affine map whose declared codomain is
    the real line (``greater_than(0)``: exp, then shift by 0), so a plain TransformedDistribution
    would claim support ``real`` and the unconstrain handler would skip the bijection.
    """

    arg_constraints: Dict[str, Any] = {}

    def __init__(self, base, transform, support, validate_args=None) -> None:
        super().__init__(base, [transform], validate_args=False)
        self._site_support = support

    @constraints.dependent_property(is_discrete=False)
    def support(self):
        return self._site_support

    def expand(self, batch_shape, _instance=None):
        new = super().expand(batch_shape, _instance=self._get_checked_instance(_OnSupport, _instance))
        new._site_support = self._site_support
        return new


class _GaussianLatents(Messenger):
    """Replace each named latent's distribution with a Gaussian in its unconstrained space."""

    def __init__(self, loc: Mapping[str, torch.Tensor], scale: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.loc, self.scale = loc, scale

    def _process_message(self, msg) -> None:
        name = msg["name"]
        if msg["type"] != "sample" or msg["is_observed"] or name not in self.loc:
            return
        fn = msg["fn"]
        shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
        loc, scale = self.loc[name].reshape(shape), self.scale[name].reshape(shape)
        base = dist.Normal(loc, scale).to_event(len(fn.event_shape))
        msg["fn"] = _OnSupport(base, biject_to(fn.support), fn.support)


def gaussian_reference(model: Callable[..., Any], draws: Union[Result, Mapping[str, torch.Tensor]], *args: Any,
                       inflate: float = 2.0, model_kwargs: Optional[Mapping[str, Any]] = None,
                       max_plate_nesting: Optional[int] = None, device: Optional[Any] = None,
                       dtype: Optional[torch.dtype] = None) -> Callable[..., Any]:
    """A reference program (same latent sites, no observations) fitted to ``draws`` of ``model``'s latents.

    ``draws``: a :class:`~ppl.inference.Result` (its samples, chains and draws pooled) or a dict
    site -> (M, *site shape). Pass the returned callable as ``reference=`` to
    :func:`~ppl.inference.smc.tempered_smc` with the same model arguments.
    """
    if not inflate > 0:
        raise ValueError(f"inflate must be positive, got {inflate!r}")
    program = Program(model, args, model_kwargs, max_plate_nesting=max_plate_nesting, device=device, dtype=dtype)
    target = UnconstrainedTarget(program)
    samples = draws.samples if isinstance(draws, Result) else draws
    sites = program.latent_sites()
    values: Dict[str, torch.Tensor] = {}
    for b in target.blocks:
        if b.name not in samples:
            raise KeyError(f"no draws of latent site {b.name!r}; the draws have {sorted(samples)}")
        v = torch.as_tensor(samples[b.name], dtype=target.dtype, device=target.device)
        values[b.name] = v.reshape((-1,) + tuple(sites[b.name].shape))
    counts = {v.shape[0] for v in values.values()}
    if len(counts) != 1 or min(counts) < 2:
        raise ValueError(f"the draws need the same number (at least 2) of values for every site, got {sorted(counts)}")
    z = target.unconstrain_values(values, counts.pop())
    mean, sd = z.mean(0), z.std(0).clamp_min(1e-6) * inflate
    loc = {b.name: mean[b.start:b.stop].detach() for b in target.blocks}
    scale = {b.name: sd[b.start:b.stop].detach() for b in target.blocks}

    def reference(*a: Any, **kw: Any) -> Any:
        hide_observed = poutine.block(hide_fn=lambda msg: msg["type"] == "sample" and msg["is_observed"])
        with _GaussianLatents(loc, scale):
            return hide_observed(model)(*a, **kw)

    reference.__name__ = f"gaussian_reference_{getattr(model, '__name__', 'model')}"
    return reference
