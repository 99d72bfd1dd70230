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
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace

from ppl.errors import ModelError, PPLError
from ppl.handlers import BatchMessenger, FixMessenger, LogDensityMessenger
from ppl.handlers._sites import PARTICLE_PLATE, is_deterministic, is_latent, is_sample
from ppl.handlers.improper import ImproperInitMessenger
from ppl.inference.batching import (BATCHINGS, LOOP, POINTWISE, VECTORIZED, VMAP, Verdict, run_per_particle,
                                    site_batch_shape, verify, warn_loop)
from ppl.inference.data_check import check_observations
from ppl.inference.runtime import defaults, move, resolve_device

_forced_batching: List[str] = ["auto"]


@contextlib.contextmanager
def forced_batching(mode: str):
    """Programs built inside this context run on path ``mode`` ("auto", "vectorized", "vmap", "loop").

    For comparing the paths on one model and seed (tests, benchmarks) without an engine argument.
    """
    if mode not in ("auto",) + BATCHINGS:
        raise ValueError(f"batching must be 'auto' or one of {BATCHINGS}, got {mode!r}")
    _forced_batching.append(mode)
    try:
        yield
    finally:
        _forced_batching.pop()


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
    not given. ``batching`` ("auto" by default) says how particles are run: "auto" verifies the
    batched run once and falls back to "vmap" or "loop" when the model does not broadcast
    (:mod:`ppl.inference.batching`); naming a path forces it ("vectorized" skips the check). ``validate`` turns Pyro's argument / support validation on; it is off by default
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
        batching: Optional[str] = None,
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
        batching = batching or _forced_batching[-1]
        if batching not in ("auto",) + BATCHINGS:
            raise ValueError(f"batching must be 'auto' or one of {BATCHINGS}, got {batching!r}")
        self._requested_batching = batching
        self._verdict: Optional[Verdict] = None
        self._latent_names: Optional[Tuple[str, ...]] = None
        self.vmap_draws: Optional[bool] = None  # whether vmap can draw this program's latents (None: not tried)
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
        return self.run_single(*handlers)[0]

    @property
    def max_plate_nesting(self) -> int:
        if self._max_plate_nesting is None:
            # improper (flat) priors cannot be sampled: give them Stan-style initial values here
            with torch.random.fork_rng(devices=_cuda_devices(self.device)):
                self._max_plate_nesting = guess_max_plate_nesting(self.trace_unbatched(ImproperInitMessenger()))
        return self._max_plate_nesting

    def run(self, n: int, *handlers: Messenger) -> Tuple[Trace, LogDensityMessenger]:
        """Run the model for ``n`` particles under ``handlers`` (outermost first), on the verified path.

        Returns the trace (values ``(n, *batched_shape)``) and the log-density accounting
        (per-particle terms of shape ``(n,)``), whichever path (:attr:`batching`) ran it.
        """
        mode = self.batching
        if mode == VECTORIZED:
            return self.run_batched(n, *handlers)
        if mode == VMAP:
            try:
                return run_per_particle(self, n, handlers, use_vmap=True)
            except Exception as e:  # noqa: BLE001 - vmap passed the check but not this run: loop from now on
                # (a real error of the model shows up again on the loop)
                self._verdict = Verdict(LOOP, f"{self._verdict.reason}; torch.func.vmap failed: {e}")
                warn_loop(self, self._verdict.reason)
        return run_per_particle(self, n, handlers, use_vmap=False)

    def run_batched(self, n: int, *handlers: Messenger) -> Tuple[Trace, LogDensityMessenger]:
        """One run for all ``n`` particles under a particle plate (the vectorized path).

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
                except (ValueError, RuntimeError, IndexError, TypeError) as e:
                    raise ModelError(_shape_hint(self, e, _last_site(tracer))) from e
        return trace, density

    def run_single(self, *handlers: Messenger) -> Tuple[Trace, LogDensityMessenger]:
        """One unbatched run (one particle) under ``handlers``, with its log-density accounting."""
        density = LogDensityMessenger()
        tracer = poutine.trace(self.model)
        with self.defaults():
            with _entered(handlers), density:
                try:
                    trace = tracer.get_trace(*self.args, **self.kwargs)
                except PPLError:
                    raise
                except (ValueError, RuntimeError, IndexError, TypeError) as e:
                    raise ModelError(f"the model {self.name!r} failed to run{_after(_last_site(tracer))}: {e}") from e
        return trace, density

    @property
    def batching(self) -> str:
        """How particles are run: "vectorized", "vmap" or "loop" (verified once, then cached)."""
        return self.verdict.mode

    @property
    def verdict(self) -> Verdict:
        """The batching path and, when it is not vectorized, the reason (names the site)."""
        if self._verdict is None:
            with torch.random.fork_rng(devices=_cuda_devices(self.device)), torch.no_grad():
                check_observations(self)
                if self._requested_batching == "auto":
                    self._verdict = verify(self)
                else:
                    self._verdict = Verdict(self._requested_batching, "requested")
            if self._verdict.mode == LOOP:
                warn_loop(self, self._verdict.reason)
        return self._verdict

    def attrs(self) -> Dict[str, str]:
        """What a result records about the program: its name and how its particles ran."""
        out = {"model": self.name, "batching": self.batching}
        if self.verdict.reason:
            out["batching_reason"] = self.verdict.reason
        return out

    def require_full_data(self, engine: str) -> None:
        """Raise :class:`ModelError` if a plate subsamples its data (``subsample_size`` < size).

        A subsampled likelihood is an unbiased estimate of the log-likelihood, not of the
        likelihood: MCMC, SMC and importance sampling on it target the wrong posterior (Pyro's
        MCMC refuses it too). Stochastic VI is the engine that handles subsampling correctly.
        """
        with torch.random.fork_rng(devices=_cuda_devices(self.device)), torch.no_grad():
            trace = self.trace_unbatched(ImproperInitMessenger())
        for name, site in trace.nodes.items():
            fn = site.get("fn")
            if site["type"] == "sample" and isinstance(fn, _Subsample) and (fn.subsample_size or fn.size) < fn.size:
                raise ModelError(
                    f"plate {name!r} subsamples {fn.subsample_size} of {fn.size} elements; {engine} needs the "
                    "exact likelihood of all the data (a subsampled one targets the wrong posterior). Remove "
                    "subsample_size / subsample for this engine, or use vi, which subsamples correctly"
                )

    def unbatched_latent_names(self) -> Tuple[str, ...]:
        """Names of the latent sites of one plain run (cached)."""
        if self._latent_names is None:
            with torch.random.fork_rng(devices=_cuda_devices(self.device)), torch.no_grad():
                trace = self.trace_unbatched(ImproperInitMessenger())
            self._latent_names = tuple(k for k, v in trace.nodes.items() if is_latent(v))
        return self._latent_names

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
            if self.batching == VECTORIZED:
                trace, _ = self.run_batched(2, ImproperInitMessenger())  # only shapes are kept: flat priors may init
            else:
                trace = self.trace_unbatched(ImproperInitMessenger())
        vectorized = self.batching == VECTORIZED
        sites: Dict[str, SiteInfo] = {}
        for name, site in trace.nodes.items():
            if not is_sample(site):
                continue
            fn = site["fn"]
            value = site["value"]
            batch_shape = tuple(fn.batch_shape)
            # a broadcast Delta can misreport its event shape: a deterministic site's is the value's rest
            event_shape = tuple(value.shape[len(batch_shape):]) if is_deterministic(site) else tuple(fn.event_shape)
            # the particle plate broadcasts every site to K + 1 batch dims, particles first; a
            # per-particle run pads a site's own batch shape to K dims the same way
            if vectorized:
                batched_shape = torch.Size(batch_shape[1:] + event_shape)
                if is_deterministic(site) and value.dim() > 0 and not _expands_to(value.shape[1:], batched_shape):
                    # the Delta counted the particle dim as an event dim (pyro.deterministic outside a
                    # plate): take the value's own shape, particles first
                    batched_shape = torch.Size(value.shape[1:])
                    event_shape = tuple(batched_shape[self.max_plate_nesting:])
            else:
                batch_shape = tuple(site_batch_shape(site))
                if is_deterministic(site):
                    batch_shape, event_shape = (), tuple(value.shape)
                batched_shape = torch.Size((1,) * (self.max_plate_nesting - len(batch_shape)) + batch_shape + event_shape)
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
        if self.batching != VECTORIZED:  # rerun each particle at its values: its own distributions give the terms
            latents = {k: v["value"] for k, v in trace.nodes.items() if is_latent(v)}
            trace, _ = run_per_particle(self, n, (FixMessenger(latents),), use_vmap=self.batching == VMAP, pointwise=True)
        out: Dict[str, torch.Tensor] = {}
        for name, info in self.observed_sites().items():
            site = trace.nodes[name]
            if POINTWISE in site["infer"]:
                log_p = site["infer"][POINTWISE]
                batch_named = info.shape[: len(info.shape) - info.event_dim]
                out[name] = log_p.reshape((n,) + tuple(batch_named))
                continue
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


def _expands_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    try:
        return tuple(torch.broadcast_shapes(tuple(shape), tuple(target))) == tuple(target)
    except RuntimeError:
        return False


def _cuda_devices(device: torch.device) -> list:
    return [device.index or 0] if device.type == "cuda" else []


def _unbatched_shape(site) -> torch.Size:
    return torch.Size(tuple(site_batch_shape(site)) + tuple(site["fn"].event_shape))


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
    nodes = [k for k, v in tracer.msngr.trace.nodes.items() if v.get("type") == "sample" and is_sample(v)]
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
