"""A program's posterior as a density over one flat unconstrained tensor of shape (N, D).

Gradient-based and random-walk kernels, SMC samplers and variational guides all want the same
thing: ``z -> log p(x, T(z)) + log|det J_T(z)|`` for a batch of N points, with the likelihood
part separable for tempering. :class:`UnconstrainedTarget` builds it from the handlers (batch,
unconstrain, temper, log-density) and maps points back to named, constrained samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, NamedTuple, Optional, Tuple, Union

import torch
from pyro.poutine.messenger import Messenger

from ppl.handlers import FixMessenger, UnconstrainMessenger
from ppl.handlers.improper import ImproperInitMessenger
from ppl.handlers.unconstrain import UNCONSTRAINED, DiscreteLatentError
from ppl.inference.program import Program


class Density(NamedTuple):
    """Per-point terms of the log target, each of shape (N,)."""

    prior: torch.Tensor       # log p(latents), constrained space
    likelihood: torch.Tensor  # log p(observations | latents), factors included
    jacobian: torch.Tensor    # log |det dT/dz|

    def total(self, beta: Union[float, torch.Tensor] = 1.0) -> torch.Tensor:
        """The tempered log target: prior + jacobian + beta * likelihood."""
        return self.prior + self.jacobian + beta * self.likelihood


@dataclass(frozen=True)
class Block:
    """Where one latent site lives in the flat vector."""

    name: str
    start: int
    stop: int
    shape: torch.Size  # one point's unconstrained, batched shape


class UnconstrainedTarget:
    """The posterior of ``program`` over flat unconstrained points ``z`` of shape (N, D).

    Every latent site must be continuous; a discrete one raises :class:`DiscreteLatentError`
    naming it. ``log_density(z)`` returns the terms as a :class:`Density`; ``constrain(z)``
    returns named samples in constrained space, deterministic sites included.

    ``fixed`` (optional, also settable later as the attribute ``target.fixed``): latent sites
    held at given batched values ``(N or 1, *batched_shape)`` in every run; they are left out of
    ``z`` (this is how a Gibbs step conditions the continuous part on discrete values).
    """

    def __init__(self, program: Program, fixed: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        self.program = program
        self.fixed: Dict[str, torch.Tensor] = dict(fixed or {})
        unknown = sorted(set(self.fixed) - set(program.latent_sites()))
        if unknown:
            raise KeyError(f"fixed values for unknown latent site(s) {unknown}; latent sites: {list(program.latent_sites())}")
        discrete = [s.name for s in program.latent_sites().values() if s.is_discrete and s.name not in self.fixed]
        if discrete:
            raise DiscreteLatentError(
                f"latent site(s) {discrete} are discrete; this engine needs continuous latents "
                "(a discrete site with finite support can be Gibbs-sampled by enumeration)"
            )
        trace, _ = self._run(1, ImproperInitMessenger(), UnconstrainMessenger(), first=True)
        blocks, start = [], 0
        for name in program.latent_sites():
            if name in self.fixed:
                continue
            u = trace.nodes[name]["infer"][UNCONSTRAINED]
            shape = u.shape[1:] if u.dim() > 0 and u.shape[0] == 1 else u.shape
            size = int(torch.Size(shape).numel())
            blocks.append(Block(name, start, start + size, torch.Size(shape)))
            start += size
        self.blocks: Tuple[Block, ...] = tuple(blocks)
        self.dim = start
        self.device = program.device
        self.dtype = program.dtype or torch.get_default_dtype()

    def _run(self, n: int, *handlers: Messenger, first: bool = False):
        """``program.run`` with the fixed sites held at their values (innermost, so other handlers see them done)."""
        if not self.fixed:
            return self.program.run(n, *handlers)
        fixed = {}
        for name, v in self.fixed.items():
            shape = tuple(self.program.sites[name].batched_shape)
            if v.dim() == 0 or tuple(v.shape[1:]) != shape:
                raise ValueError(f"fixed value for site {name!r} has shape {tuple(v.shape)}; expected the batched "
                                 f"shape (N, *{shape}) (SiteInfo.to_batched of a named (N, *shape) value)")
            rows = v.shape[0]
            if first or rows == 1:
                v = v[:1].expand((n,) + shape)
            elif rows != n:
                raise ValueError(f"fixed value for site {name!r} has {rows} rows but there are {n} points")
            fixed[name] = v
        return self.program.run(n, *handlers, FixMessenger(fixed))

    # ----------------------------------------------------------------------------- packing
    def unflatten(self, z: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Split flat points (N, D) into each site's batched unconstrained value."""
        self._check(z)
        n = z.shape[0]
        return {b.name: z[:, b.start:b.stop].reshape((n,) + tuple(b.shape)) for b in self.blocks}

    def flatten(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Join per-site unconstrained values (N, *shape) into flat points (N, D)."""
        parts = []
        for b in self.blocks:
            if b.name not in values:
                raise KeyError(f"no value for latent site {b.name!r}")
            v = values[b.name]
            parts.append(v.reshape(v.shape[0], -1))
        return torch.cat(parts, dim=1)

    def _check(self, z: torch.Tensor) -> None:
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"points must have shape (N, {self.dim}), got {tuple(z.shape)}")

    # ----------------------------------------------------------------------------- density
    def log_density(self, z: torch.Tensor) -> Density:
        """The posterior's terms at ``z`` (N, D); differentiable in ``z``."""
        _, density = self._run(z.shape[0], UnconstrainMessenger(self.unflatten(z)))
        zero = z.new_zeros(z.shape[0])
        return Density(
            prior=_as_batch(density.get("prior"), zero),
            likelihood=_as_batch(density.get("likelihood"), zero),
            jacobian=_as_batch(density.get("jacobian"), zero),
        )

    def prior_excess(self, z: torch.Tensor) -> Optional[torch.Tensor]:
        """log of (scaled prior / plain prior) at ``z`` for latents under ``poutine.scale`` or a mask.

        A draw from :meth:`sample_prior` comes from the sites' own distributions; this is its log
        weight towards the prior the program actually has. None when no latent is scaled or masked.
        """
        with torch.no_grad():
            _, density = self._run(z.shape[0], UnconstrainMessenger(self.unflatten(z)))
        excess = density.terms.get("prior_excess")
        return None if excess is None else _as_batch(excess, z.new_zeros(z.shape[0]))

    def log_prob(self, z: torch.Tensor, beta: Union[float, torch.Tensor] = 1.0) -> torch.Tensor:
        """The (tempered) log target at ``z``, shape (N,)."""
        return self.log_density(z).total(beta)

    def log_prob_and_grad(
        self, z: torch.Tensor, beta: Union[float, torch.Tensor] = 1.0
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The log target and its gradient in ``z``; points are independent, so one backward pass."""
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            lp = self.log_prob(z, beta)
            (grad,) = torch.autograd.grad(lp.sum(), z)
        return lp.detach(), grad

    # ----------------------------------------------------------------------------- points
    def constrain(self, z: torch.Tensor, observed: bool = False) -> Dict[str, torch.Tensor]:
        """Named constrained samples (N, *shape) at ``z``, deterministic sites included.

        With ``observed=True`` also returns the pointwise log-likelihood under key
        ``"__log_likelihood__"`` (a dict), for ArviZ's log_likelihood group.
        """
        with torch.no_grad():
            trace, _ = self._run(z.shape[0], UnconstrainMessenger(self.unflatten(z)))
            out: Dict[str, object] = dict(self.program.named_values(trace))
            if observed:
                out["__log_likelihood__"] = self.program.pointwise_log_likelihood(trace)
        return out  # type: ignore[return-value]

    def sample_prior(self, n: int) -> torch.Tensor:
        """``n`` points drawn from the prior, in unconstrained space.

        Sites with an improper flat prior (``ImproperUniform``, Stan's implicit prior) cannot be
        drawn: they get Stan's initialisation, Uniform(-2, 2) in unconstrained space, so these
        points are valid MCMC starting points but not prior draws for such models.
        """
        with torch.no_grad():
            trace, _ = self._run(n, ImproperInitMessenger(), UnconstrainMessenger())
            return self.flatten({b.name: trace.nodes[b.name]["infer"][UNCONSTRAINED].expand((n,) + tuple(b.shape))
                                 for b in self.blocks})

    def unconstrain_values(self, values: Mapping[str, torch.Tensor], n: int) -> torch.Tensor:
        """Flat points from constrained values given per site in named shape, broadcast to ``n``.

        Each value may have the site's named shape (one point, broadcast to all) or a leading
        dimension of ``n``. Sites not given are drawn from the prior (flat-prior sites: Uniform(-2, 2)
        in unconstrained space, as Stan initialises).
        """
        sites = self.program.latent_sites()
        unknown = sorted(set(values) - set(sites))
        if unknown:
            raise KeyError(f"init values for unknown latent site(s) {unknown}; latent sites: {list(sites)}")
        with torch.no_grad():
            fixed = {}
            for name, v in values.items():
                info = sites[name]
                v = torch.as_tensor(v, device=self.device, dtype=self.dtype)
                if tuple(v.shape) == tuple(info.shape):
                    v = v.expand((n,) + tuple(info.shape))
                elif tuple(v.shape) != (n,) + tuple(info.shape):
                    raise ValueError(
                        f"init value for site {name!r} has shape {tuple(v.shape)}; expected "
                        f"{tuple(info.shape)} or {(n,) + tuple(info.shape)}"
                    )
                if not _bounds_from_values(info.support) and not bool(info.support.check(v).all()):
                    raise ValueError(f"init value for site {name!r} is outside its support {info.support}")
                fixed[name] = info.to_batched(v)
            trace, _ = self._run(n, ImproperInitMessenger(), FixMessenger(fixed), UnconstrainMessenger())
            return self.flatten({b.name: trace.nodes[b.name]["infer"][UNCONSTRAINED].expand((n,) + tuple(b.shape))
                                 for b in self.blocks})

    def site_log_densities(self, z: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Each site's per-point log density at ``z``: used to name the site behind a NaN."""
        with torch.no_grad():
            _, density = self._run(z.shape[0], UnconstrainMessenger(self.unflatten(z)))
        return dict(density.site_terms)

    def explain_nonfinite(self, z: torch.Tensor, what: str = "log density") -> str:
        """A sentence naming the sites whose log density is NaN / infinite at ``z``."""
        bad = [f"{name} ({'NaN' if torch.isnan(v).any() else 'inf'} at {int((~torch.isfinite(v)).sum())} point(s))"
               for name, v in self.site_log_densities(z).items() if not torch.isfinite(v).all()]
        return f"the {what} is not finite at site(s): " + ", ".join(bad) if bad else f"the {what} is not finite"


def _as_batch(x, zero: torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.expand_as(zero) if x.dim() == 0 else x
    return zero + x


def _bounds_from_values(support) -> bool:
    """Whether a support's bounds are tensors (possibly computed from other sites, e.g. beta1 < 1 - alpha1).

    The analysis run's bounds hold for its own draws only, so values cannot be checked against them
    here; the model run itself maps them (and gives -inf log density where they fall outside).
    """
    base = getattr(support, "base_constraint", support)
    return any(isinstance(getattr(base, a, None), torch.Tensor) for a in ("lower_bound", "upper_bound"))
