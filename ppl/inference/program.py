"""A Pyro program bound to its arguments: its sites, their shapes, and batched runs of it.

Every engine starts here. :class:`Program` runs the model once to learn its sites (names,
shapes, supports, plates), then runs it batched over N particles under whatever handlers the
engine composes, and converts between batched values and named per-particle arrays.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import pyro
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace

from ppl.errors import ModelError, PPLError
from ppl.handlers import BatchMessenger, LogDensityMessenger
from ppl.handlers._sites import PARTICLE_PLATE, is_deterministic, is_latent, is_sample
from ppl.handlers.improper import ImproperInitMessenger
from ppl.inference.runtime import defaults, move, resolve_device


@dataclass(frozen=True)
class SiteInfo:
    """What an engine needs to know about one site of the program.

    ``batched_shape`` is one particle's slice of the value in a batched run (it keeps the
    singleton dimensions that broadcasting against other plates needs); ``shape`` drops those,
    keeping plate and event dimensions, and ``dims`` names each dimension of ``shape`` (plate
    names for plate dimensions, ``<site>_dim_<k>`` otherwise), as ArviZ's dims.
    """

    name: str
    kind: str  # "latent", "observed", "factor" or "deterministic"
    batched_shape: torch.Size
    shape: torch.Size
    dims: Tuple[str, ...]
    event_dim: int
    support: Any
    is_discrete: bool

    def to_named(self, value: torch.Tensor) -> torch.Tensor:
        """A batched value ``(N, *batched_shape)`` reshaped to ``(N, *shape)``."""
        value = value.expand((value.shape[0],) + tuple(self.batched_shape))
        return value.reshape((value.shape[0],) + tuple(self.shape))

    def to_batched(self, value: torch.Tensor) -> torch.Tensor:
        """A named value ``(N, *shape)`` reshaped to ``(N, *batched_shape)``."""
        return value.reshape((value.shape[0],) + tuple(self.batched_shape))


def _named_layout(name: str, batch_shape: Sequence[int], event_shape: Sequence[int], frames) -> Tuple[torch.Size, Tuple[str, ...]]:
    """Drop singleton batch dims that belong to no plate; name the rest."""
    plate_by_dim = {f.dim: f.name for f in frames if f.vectorized and f.name != PARTICLE_PLATE}
    shape: List[int] = []
    dims: List[str] = []
    n = len(batch_shape)
    for i, size in enumerate(batch_shape):
        dim = i - n
        if dim in plate_by_dim:
            shape.append(size)
            dims.append(plate_by_dim[dim])
        elif size != 1:
            shape.append(size)
            dims.append(f"{name}_dim_{len(dims)}")
    for size in event_shape:
        shape.append(size)
        dims.append(f"{name}_dim_{len(dims)}")
    return torch.Size(shape), tuple(dims)


def _kind(site) -> str:
    if is_latent(site):
        return "latent"
    if is_deterministic(site):
        return "deterministic"
    if site["infer"].get("is_auxiliary", False):
        return "factor"
    return "observed"


def guess_max_plate_nesting(trace: Trace) -> int:
    """The number of batch dimensions the program uses (plates and distribution batch shapes)."""
    depth = 0
    for site in trace.nodes.values():
        if not is_sample(site):
            continue
        depth = max(depth, len(site["fn"].batch_shape))
        for f in site["cond_indep_stack"]:
            if f.vectorized and f.dim is not None:
                depth = max(depth, -f.dim)
    return depth


class Program:
    """A model with its arguments, ready to be run batched under an engine's handlers.

    ``device`` / ``dtype`` move the tensor arguments and make the model's own constants follow;
    by default both follow the arguments. ``max_plate_nesting`` is found from a trial run when
    not given. ``validate`` turns Pyro's argument / support validation on; it is off by default
    because an observation outside the support of some particles is a zero weight, not an
    error, and engines name the site of any NaN / inf log density themselves.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        args: Sequence[Any] = (),
        kwargs: Optional[Mapping[str, Any]] = None,
        *,
        max_plate_nesting: Optional[int] = None,
        device: Optional[Any] = None,
        dtype: Optional[torch.dtype] = None,
        validate: bool = False,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be a callable Pyro program, got {type(model).__name__}")
        kwargs = dict(kwargs or {})
        self.model = model
        self.device = resolve_device(device, args, kwargs)
        self.dtype = dtype
        self.args = tuple(move(list(args), self.device, dtype))
        self.kwargs = move(kwargs, self.device, dtype)
        self._max_plate_nesting = max_plate_nesting
        self.validate = validate
        self._sites: Optional[Dict[str, SiteInfo]] = None

    @property
    def name(self) -> str:
        return getattr(self.model, "__name__", type(self.model).__name__)

    # ----------------------------------------------------------------------------- running
    def defaults(self):
        """Context for running the model: default device / dtype, and Pyro's validation setting."""
        stack = contextlib.ExitStack()
        stack.enter_context(defaults(self.device, self.dtype))
        stack.enter_context(pyro.validation_enabled(self.validate))
        return stack

    def trace_unbatched(self, *handlers: Messenger) -> Trace:
        """One plain run of the model (no particle dimension) under ``handlers``."""
        tracer = poutine.trace(self.model)
        with self.defaults():
            with _entered(handlers):
                try:
                    return tracer.get_trace(*self.args, **self.kwargs)
                except PPLError:
                    raise
                except (ValueError, RuntimeError) as e:
                    raise ModelError(f"the model {self.name!r} failed to run{_after(_last_site(tracer))}: {e}") from e

    @property
    def max_plate_nesting(self) -> int:
        if self._max_plate_nesting is None:
            # improper (flat) priors cannot be sampled: give them Stan-style initial values here
            with torch.random.fork_rng(devices=_cuda_devices(self.device)):
                self._max_plate_nesting = guess_max_plate_nesting(self.trace_unbatched(ImproperInitMessenger()))
        return self._max_plate_nesting

    def run(self, n: int, *handlers: Messenger) -> Tuple[Trace, LogDensityMessenger]:
        """Run the model once for ``n`` particles under ``handlers`` (outermost first).

        Returns the trace and the log-density accounting (per-particle terms of shape ``(n,)``).
        The handlers sit outside the particle plate, so they see every site already batched,
        and outside the accounting, whose postprocessing must come after theirs (Pyro runs
        postprocessing outermost first).
        """
        density = LogDensityMessenger()
        tracer = poutine.trace(self.model)
        batcher = BatchMessenger(n, self.max_plate_nesting, self.device)
        with self.defaults():
            with _entered(handlers), density, batcher:
                try:
                    trace = tracer.get_trace(*self.args, **self.kwargs)
                except PPLError:
                    raise
                except (ValueError, RuntimeError) as e:
                    raise ModelError(_shape_hint(self, e, _last_site(tracer))) from e
        return trace, density

    # ----------------------------------------------------------------------------- sites
    @property
    def sites(self) -> Dict[str, SiteInfo]:
        """Every sample site of the program (latent, observed, factor, deterministic), in order."""
        if self._sites is None:
            self._sites = self._analyse()
        return self._sites

    def latent_sites(self) -> Dict[str, SiteInfo]:
        return {k: s for k, s in self.sites.items() if s.kind == "latent"}

    def observed_sites(self) -> Dict[str, SiteInfo]:
        return {k: s for k, s in self.sites.items() if s.kind == "observed"}

    def _analyse(self) -> Dict[str, SiteInfo]:
        with torch.random.fork_rng(devices=_cuda_devices(self.device)):  # leave the caller's RNG as it was
            trace, _ = self.run(2, ImproperInitMessenger())  # only shapes are kept: flat priors may init
        sites: Dict[str, SiteInfo] = {}
        for name, site in trace.nodes.items():
            if not is_sample(site):
                continue
            fn = site["fn"]
            value = site["value"]
            batch_shape = tuple(fn.batch_shape)
            # a broadcast Delta can misreport its event shape: a deterministic site's is the value's rest
            event_shape = tuple(value.shape[len(batch_shape):]) if is_deterministic(site) else tuple(fn.event_shape)
            # the particle plate broadcasts every site to K + 1 batch dims, particles first
            batched_shape = torch.Size(batch_shape[1:] + event_shape)
            shape, dims = _named_layout(name, batched_shape[: len(batched_shape) - len(event_shape)],
                                        event_shape, site["cond_indep_stack"])
            sites[name] = SiteInfo(
                name=name,
                kind=_kind(site),
                batched_shape=torch.Size(batched_shape),
                shape=shape,
                dims=dims,
                event_dim=len(event_shape),
                support=fn.support,
                is_discrete=bool(fn.support.is_discrete),
            )
        if not any(s.kind == "latent" for s in sites.values()):
            raise ModelError(
                f"the model {self.name!r} has no latent sites: every pyro.sample site is observed, "
                "so there is no posterior to infer"
            )
        return sites

    # ----------------------------------------------------------------------------- values
    def named_values(self, trace: Trace, kinds: Sequence[str] = ("latent", "deterministic")) -> Dict[str, torch.Tensor]:
        """Values of the sites of ``kinds`` from a batched trace, as ``(N, *shape)`` tensors."""
        n = _particles(trace)
        return {
            name: info.to_named(_lift(trace.nodes[name]["value"], n, info))
            for name, info in self.sites.items()
            if info.kind in kinds and name in trace.nodes
        }

    def pointwise_log_likelihood(self, trace: Trace) -> Dict[str, torch.Tensor]:
        """Per-observation log-likelihood of each observed site, shape ``(N, *plate shape)``.

        This is what ``az.loo`` / ``az.waic`` need: one term per observation, masked but not
        scaled (subsampling or tempering scales are not part of the pointwise likelihood).
        """
        n = _particles(trace)
        out = {}
        for name, info in self.observed_sites().items():
            site = trace.nodes[name]
            log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
            log_p = scale_and_mask(log_p, 1.0, site["mask"])
            batch_named = info.shape[: len(info.shape) - info.event_dim]
            batch_batched = info.batched_shape[: len(info.batched_shape) - info.event_dim]
            log_p = log_p.expand((n,) + tuple(batch_batched))
            out[name] = log_p.reshape((n,) + tuple(batch_named))
        return out

    def observed_data(self) -> Dict[str, torch.Tensor]:
        """The observed values, one copy (no particle dimension), in their named shapes."""
        with torch.random.fork_rng(devices=_cuda_devices(self.device)):
            trace = self.trace_unbatched(ImproperInitMessenger())
        out = {}
        for name, info in self.observed_sites().items():
            site = trace.nodes[name]
            value = site["value"].expand(_unbatched_shape(site))
            out[name] = value.reshape(info.shape) if value.numel() == info.shape.numel() else value
        return out


def _cuda_devices(device: torch.device) -> list:
    return [device.index or 0] if device.type == "cuda" else []


def _unbatched_shape(site) -> torch.Size:
    fn = site["fn"]
    return torch.Size(tuple(fn.batch_shape) + tuple(fn.event_shape))


def _particles(trace: Trace) -> int:
    for site in trace.nodes.values():
        for f in site.get("cond_indep_stack", ()):
            if f.name == PARTICLE_PLATE:
                return f.size
    raise ValueError("the trace was not run under a batch handler")


def _lift(value: torch.Tensor, n: int, info: SiteInfo) -> torch.Tensor:
    """A value recorded without its full particle layout, broadcast to ``(n, *batched_shape)``."""
    target = (n,) + tuple(info.batched_shape)
    while value.dim() < len(target):
        value = value.unsqueeze(0)
    return value.expand(target)


def _entered(handlers: Sequence[Messenger]) -> contextlib.ExitStack:
    """Enter several messengers as one context, the first one outermost."""
    stack = contextlib.ExitStack()
    for handler in handlers:
        stack.enter_context(handler)
    return stack


def _last_site(tracer) -> Optional[str]:
    """Name of the last site a failed run recorded (the error came at or after it)."""
    nodes = [k for k, v in tracer.msngr.trace.nodes.items() if v.get("type") == "sample"]
    return nodes[-1] if nodes else None


def _after(site: Optional[str]) -> str:
    return f" after site {site!r}" if site else " before its first site"


def _shape_hint(program: Program, error: Exception, site: Optional[str] = None) -> str:
    return (
        f"the model {program.name!r} failed when batched over particles{_after(site)}: {error}\n"
        "Engines add one particle dimension to the left of every plate (as Pyro's "
        "vectorize_particles does), so the model must broadcast: index from the right "
        "(x[..., i]), use plates for conditionally independent dimensions and .to_event() for "
        "dependent ones, and avoid .item() / Python control flow on sampled values."
    )
