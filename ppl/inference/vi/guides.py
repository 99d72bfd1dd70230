"""Variational guides q(z) over a program's flat unconstrained space (N, D), amortized or not.

Every guide is a ``torch.nn.Module`` with ``rsample(n, context=None) -> (z, log_q)`` and
``log_prob(z, context=None)``. Unamortized guides return ``z`` of shape ``(n, D)``; amortized
ones take observations ``context`` of shape ``(B, *obs_shape)`` and return ``(n, B, D)``.
``as_pyro_guide(target)`` turns any unamortized guide into a Pyro guide program over the model's
named latent sites, so it plugs into importance sampling, SMC proposals and MCMC initialisation.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.poutine.runtime import _PYRO_STACK
from torch import nn
from torch.distributions import biject_to
from torch.nn.functional import softplus

from ppl.handlers import BatchMessenger

_EPS = 1e-5


def _inv_softplus(x: float) -> float:
    return math.log(math.expm1(x))


class Guide(nn.Module):
    """Base class: a density q over flat unconstrained points of dimension ``dim``."""

    amortized = False

    def __init__(self, dim: int) -> None:
        super().__init__()
        if int(dim) < 1:
            raise ValueError(f"a guide needs dim >= 1, got {dim!r}")
        self.dim = int(dim)

    def distribution(self, context: Optional[torch.Tensor] = None) -> torch.distributions.Distribution:
        """The guide as a distribution with event shape (D,) (batch (B,) when amortized)."""
        raise NotImplementedError

    def rsample(self, n: int, context: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``n`` reparameterised draws and their log q (differentiable in the guide's parameters)."""
        d = self.distribution(context)
        z = d.rsample((int(n),))
        return z, d.log_prob(z)

    def sample(self, n: int, context: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws and their log q, detached (for proposals and initialisation)."""
        with torch.no_grad():
            z, log_q = self.rsample(n, context)
        return z.detach(), log_q.detach()

    def log_prob(self, z: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """log q(z) for points ``z`` of shape (..., D)."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"points must have last dimension {self.dim}, got shape {tuple(z.shape)}")
        return self.distribution(context).log_prob(z)

    def as_pyro_guide(self, target, context: Optional[torch.Tensor] = None) -> Callable[..., None]:
        """A Pyro guide program drawing the model's latent sites from this guide (see :func:`as_pyro_guide`)."""
        return as_pyro_guide(self, target, context)


class NormalGuide(Guide):
    """Mean-field Normal: independent N(loc_i, scale_i) per unconstrained coordinate."""

    def __init__(self, dim: int, init_loc: Optional[torch.Tensor] = None, init_scale: float = 0.1) -> None:
        super().__init__(dim)
        self.loc = nn.Parameter(_init_loc(init_loc, dim))
        self.raw_scale = nn.Parameter(torch.full((dim,), _inv_softplus(init_scale)))

    def distribution(self, context=None):
        return dist.Normal(self.loc, softplus(self.raw_scale) + _EPS).to_event(1)


class LowRankGuide(Guide):
    """Multivariate Normal with covariance W W^T + diag(d), W of shape (D, rank)."""

    def __init__(self, dim: int, rank: Optional[int] = None, init_loc: Optional[torch.Tensor] = None,
                 init_scale: float = 0.1) -> None:
        super().__init__(dim)
        rank = int(rank or max(1, min(dim, round(math.sqrt(dim)))))
        self.loc = nn.Parameter(_init_loc(init_loc, dim))
        self.cov_factor = nn.Parameter(torch.randn(dim, rank) * init_scale / math.sqrt(rank) * 0.1)
        self.raw_diag = nn.Parameter(torch.full((dim,), _inv_softplus(init_scale**2)))

    def distribution(self, context=None):
        return dist.LowRankMultivariateNormal(self.loc, self.cov_factor, softplus(self.raw_diag) + _EPS)


class FullRankGuide(Guide):
    """Multivariate Normal with a full lower-triangular Cholesky factor."""

    def __init__(self, dim: int, init_loc: Optional[torch.Tensor] = None, init_scale: float = 0.1) -> None:
        super().__init__(dim)
        self.loc = nn.Parameter(_init_loc(init_loc, dim))
        self.raw_tril = nn.Parameter(torch.zeros(dim, dim))
        self.raw_diag = nn.Parameter(torch.full((dim,), _inv_softplus(init_scale)))

    def scale_tril(self) -> torch.Tensor:
        return self.raw_tril.tril(-1) + torch.diag_embed(softplus(self.raw_diag) + _EPS)

    def distribution(self, context=None):
        return dist.MultivariateNormal(self.loc, scale_tril=self.scale_tril())


class FlowGuide(Guide):
    """A normalizing flow built from Pyro's transforms on a standard Normal base.

    ``kind="affine"`` stacks affine autoregressive layers (fast sampling; log q of outside points
    inverts sequentially), ``kind="spline"`` stacks rational-quadratic spline couplings with
    permutations (fast both ways; needs D >= 2, D = 1 uses an elementwise spline). An affine
    layer with learnable location and scale comes last so the flow starts as a Normal guide.
    """

    def __init__(self, dim: int, flows: int = 4, kind: str = "spline", hidden: Optional[Sequence[int]] = None,
                 init_loc: Optional[torch.Tensor] = None, init_scale: float = 1.0) -> None:
        super().__init__(dim)
        if kind not in ("affine", "spline"):
            raise ValueError(f"flow kind must be 'affine' or 'spline', got {kind!r}")
        hidden = list(hidden or [max(16, 4 * dim)] * 2)
        layers = []
        for i in range(int(flows)):
            if dim == 1:
                layers.append(T.spline(1, count_bins=8, bound=5.0))
            elif kind == "affine":
                layers.append(T.affine_autoregressive(dim, hidden_dims=hidden))
            else:
                layers.append(T.spline_coupling(dim, hidden_dims=hidden, count_bins=8, bound=5.0))
                layers.append(T.Permute(torch.randperm(dim)))
        self.layers = nn.ModuleList([t for t in layers if isinstance(t, nn.Module)])
        self._transforms = layers
        self.loc = nn.Parameter(_init_loc(init_loc, dim))
        self.raw_scale = nn.Parameter(torch.full((dim,), _inv_softplus(init_scale)))
        self.register_buffer("_zero", torch.zeros(dim))

    def distribution(self, context=None):
        base = dist.Normal(self._zero, torch.ones_like(self._zero)).to_event(1)
        affine = T.AffineTransform(self.loc, softplus(self.raw_scale) + _EPS, event_dim=1)
        return dist.TransformedDistribution(base, list(self._transforms) + [affine])

    def _apply(self, fn, recurse=True):  # keep Permute's index tensors on the module's device
        out = super()._apply(fn, recurse)
        for t in self._transforms:
            if isinstance(t, T.Permute):
                t.permutation = fn(t.permutation) if t.permutation.is_floating_point() else t.permutation.to(self._zero.device)
                t.__dict__.pop("inv_permutation", None)
        return out


# --------------------------------------------------------------------------------- encoders
class MLPEncoder(nn.Module):
    """Observations of any fixed shape (B, *shape), flattened, through an MLP to (B, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int = 64, hidden: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        self.net = _mlp([int(in_dim), *hidden, int(out_dim)])
        self.in_dim = int(in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.in_dim:
            raise ValueError(f"the encoder expects {self.in_dim} numbers per observation, got {x.shape[1]}")
        return self.net(x)


class SetEncoder(nn.Module):
    """Permutation-invariant (Deep Sets) encoder: a set (B, n, d) -> rho(mean_i phi(x_i)) of shape (B, out_dim).

    A set of scalars (B, n) is read as (B, n, 1). Mean pooling makes the output invariant to the
    order of the elements and usable for sets of any size.
    """

    def __init__(self, elem_dim: int = 1, out_dim: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.elem_dim = int(elem_dim)
        self.phi = _mlp([self.elem_dim, hidden, hidden])
        self.rho = _mlp([hidden, hidden, int(out_dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and self.elem_dim == 1:
            x = x.unsqueeze(-1)
        if x.dim() != 3 or x.shape[-1] != self.elem_dim:
            raise ValueError(f"a set encoder expects (B, n, {self.elem_dim}) observations, got {tuple(x.shape)}")
        return self.rho(self.phi(x).mean(1))


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


class AmortizedGuide(Guide):
    """q(z | x): an encoder maps observations (B, *obs_shape) to the parameters of a guide.

    ``family`` is "normal" (diagonal), "fullrank" (Cholesky factor from the network), "flow"
    (conditional affine autoregressive layers with the encoder's output as context) or "spline"
    (conditional rational-quadratic spline autoregressive layers with ``bins`` bins on [-5, 5]);
    ``flows`` layers with autoregressive networks of ``hidden`` sizes. Draws have shape (n, B, D). ``condition(x)`` fixes one observation and returns an unamortized guide.
    """

    amortized = True

    def __init__(self, dim: int, encoder: nn.Module, embed_dim: int, family: str = "normal",
                 flows: int = 3, hidden: Optional[Sequence[int]] = None, bins: int = 8) -> None:
        super().__init__(dim)
        if family not in ("normal", "fullrank", "flow", "spline"):
            raise ValueError(f"family must be 'normal', 'fullrank', 'flow' or 'spline', got {family!r}")
        self.encoder = encoder
        self.family = family
        if family == "normal":
            self.head = nn.Linear(embed_dim, 2 * dim)
        elif family == "fullrank":
            self.head = nn.Linear(embed_dim, dim + dim * (dim + 1) // 2)
            self.register_buffer("_tril_idx", torch.tril_indices(dim, dim))
        else:
            self.head = nn.Linear(embed_dim, 2 * dim)
            hidden = list(hidden or [max(32, 4 * dim)] * 2)
            def layer():
                if dim == 1:
                    return T.conditional_spline(1, embed_dim, count_bins=bins, bound=5.0)
                if family == "spline":
                    return T.conditional_spline_autoregressive(dim, embed_dim, hidden_dims=hidden, count_bins=bins, bound=5.0)
                return T.conditional_affine_autoregressive(dim, embed_dim, hidden_dims=hidden)

            self.flows = nn.ModuleList([layer() for _ in range(int(flows))])
        with torch.no_grad():  # start near N(0, 1)
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
            if family != "fullrank":
                self.head.bias[dim:] = _inv_softplus(1.0)

    def distribution(self, context=None):
        if context is None:
            raise ValueError("an amortized guide needs observations: pass context=x of shape (B, *obs_shape)")
        h = self.encoder(context)
        p = self.head(h)
        d = self.dim
        if self.family == "fullrank":
            loc, flat = p[:, :d], p[:, d:]
            tril = p.new_zeros(p.shape[0], d, d)
            tril[:, self._tril_idx[0], self._tril_idx[1]] = flat
            diag = softplus(torch.diagonal(tril, dim1=-2, dim2=-1) + _inv_softplus(1.0)) + _EPS
            tril = tril.tril(-1) + torch.diag_embed(diag)
            return dist.MultivariateNormal(loc, scale_tril=tril)
        loc, scale = p[:, :d], softplus(p[:, d:]) + _EPS
        if self.family == "normal":
            return dist.Normal(loc, scale).to_event(1)
        base = dist.Normal(torch.zeros_like(loc), torch.ones_like(loc)).to_event(1)
        transforms = [t.condition(h) for t in self.flows] + [T.AffineTransform(loc, scale, event_dim=1)]
        return dist.TransformedDistribution(base, transforms)

    def condition(self, x: torch.Tensor) -> "ConditionedGuide":
        """This guide at one observation ``x`` (shape ``obs_shape``): an unamortized guide over (n, D)."""
        return ConditionedGuide(self, x)


class ConditionedGuide(Guide):
    """An amortized guide evaluated at one fixed observation; draws have shape (n, D)."""

    def __init__(self, guide: AmortizedGuide, x: torch.Tensor) -> None:
        super().__init__(guide.dim)
        self.guide = guide
        self.register_buffer("x", x.unsqueeze(0))

    def rsample(self, n, context=None):
        z, log_q = self.guide.rsample(n, self.x)
        return z[:, 0], log_q[:, 0]

    def log_prob(self, z, context=None):
        return self.guide.log_prob(z.unsqueeze(-2), self.x)[..., 0]


def _init_loc(init_loc: Optional[torch.Tensor], dim: int) -> torch.Tensor:
    if init_loc is None:
        return torch.zeros(dim)
    init_loc = torch.as_tensor(init_loc, dtype=torch.get_default_dtype()).detach().clone().reshape(-1)
    if init_loc.numel() != dim:
        raise ValueError(f"init_loc has {init_loc.numel()} entries; the guide has dim {dim}")
    return init_loc


# --------------------------------------------------------------------------------- automatic choice
GUIDES = ("normal", "lowrank", "fullrank", "flow")


def auto_guide(target, name: str = "auto", init_loc: Optional[torch.Tensor] = None, **options) -> Guide:
    """A guide for ``target`` (an ``UnconstrainedTarget``) by name; "auto" = full rank for D <= 50, else low rank."""
    dim = target.dim
    kind = name
    if kind == "auto":
        kind = "fullrank" if dim <= 50 else "lowrank"
    if kind == "normal":
        guide = NormalGuide(dim, init_loc, **options)
    elif kind == "lowrank":
        guide = LowRankGuide(dim, init_loc=init_loc, **options)
    elif kind == "fullrank":
        guide = FullRankGuide(dim, init_loc, **options)
    elif kind == "flow":
        guide = FlowGuide(dim, init_loc=init_loc, **options)
    else:
        raise ValueError(f"unknown guide {kind!r}; choose one of {('auto',) + GUIDES} or pass a Guide / Pyro guide")
    return guide.to(device=target.device, dtype=target.dtype)


# --------------------------------------------------------------------------------- Pyro adapter
def _particles_in_context() -> Optional[int]:
    for frame in _PYRO_STACK:
        if isinstance(frame, BatchMessenger):
            return frame.size
    return None


def as_pyro_guide(guide: Guide, target, context: Optional[torch.Tensor] = None) -> Callable[..., None]:
    """A Pyro guide program over the model's named latent sites, drawing them from ``guide``.

    Run inside a batch handler it draws one point per particle (unbatched: one point). Each site
    is a ``Delta`` at the constrained value; the joint log q (with the log-Jacobians of the
    constraining maps) is spread over the sites' elements so that summing them gives log q(x).
    """
    if guide.amortized:
        if context is None:
            raise ValueError("an amortized guide needs one observation: as_pyro_guide(target, context=x)")
        guide = guide.condition(context)
    sites = target.program.latent_sites()

    def pyro_guide(*args, **kwargs) -> None:
        n = _particles_in_context()
        z, log_q = guide.sample(n or 1)
        values = target.unflatten(z)
        xs: Dict[str, torch.Tensor] = {}
        log_qx = log_q
        for b in target.blocks:
            info = sites[b.name]
            transform = biject_to(info.support)
            u = values[b.name].reshape((z.shape[0],) + tuple(info.batched_shape))
            x = transform(u)
            ladj = transform.log_abs_det_jacobian(u, x)
            log_qx = log_qx - ladj.reshape(z.shape[0], -1).sum(1)
            xs[b.name] = x
        for i, b in enumerate(target.blocks):
            info = sites[b.name]
            x = xs[b.name]
            batch_shape = x.shape[: x.dim() - info.event_dim]
            count = max(1, int(torch.Size(batch_shape[1:]).numel()))
            share = log_qx if i == 0 else torch.zeros_like(log_qx)
            dens = (share / count).reshape((-1,) + (1,) * (len(batch_shape) - 1)).expand(batch_shape)
            if n is None:
                x, dens = x[0], dens[0]
            pyro.sample(b.name, dist.Delta(x, log_density=dens, event_dim=info.event_dim))

    return pyro_guide
