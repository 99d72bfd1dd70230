"""Verified batching: is a program's batched run N independent runs? If not, run it per particle.

Engines add one particle dimension left of every plate. A Pyro model written for one run at a time
(``x[0]`` on a latent vector, ``data @ w``, ``.to_event()`` with no argument, an un-plated batch
dimension the model sums over) may crash under that dimension or, worse, silently mix particles.
:func:`verify` checks a batched run of 3 particles against 3 unbatched runs of the model with each
particle's latent values held fixed, site by site, and picks how the program is run:

- ``"vectorized"``: the batched run is right (the fast path: one run for all particles);
- ``"vmap"``: ``torch.func.vmap`` over an unbatched run, for runs that draw nothing (densities and
  their gradients: MCMC, SMC moves, VI); runs that draw from the prior use the loop below;
- ``"loop"``: one unbatched run per particle, stacked (the last resort, with a warning).

:func:`run_per_particle` returns the same ``(trace, density)`` as a batched run: values shaped
``(N, *batched_shape)``, per-particle log-density terms of shape ``(N,)``, so engines need not know
which path ran. Handlers that hold per-particle tensors take part through two methods,
``particle_state() -> {key: (N or 1, ...)}`` and ``with_particle_state(rows) -> handler``;
handlers without per-particle state are used as they are.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import torch
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from pyro.distributions.util import scale_and_mask
from torch.utils._pytree import tree_map

from ppl.errors import ModelError, PPLError, VariableStructureError
from ppl.handlers._sites import PARTICLE_PLATE, is_latent, is_observation, is_sample
from ppl.handlers.fix import FixMessenger
from ppl.handlers.improper import ImproperInitMessenger, cannot_sample
from ppl.handlers.log_density import ROLES

if TYPE_CHECKING:  # pragma: no cover
    from ppl.inference.program import Program

VECTORIZED, VMAP, LOOP = "vectorized", "vmap", "loop"
BATCHINGS = (VECTORIZED, VMAP, LOOP)

POINTWISE = "ppl_pointwise_log_likelihood"
"""``msg["infer"]`` key where a per-particle run stores an observed site's pointwise log-likelihood."""

_CHECK_PARTICLES = 3


class BatchingWarning(UserWarning):
    """A program runs on the per-particle loop: correct, but one model run per particle."""


@dataclass(frozen=True)
class Verdict:
    """How a program is run, and why it is not vectorized (empty when it is)."""

    mode: str
    reason: str = ""


# ---------------------------------------------------------------------------------------- verdict
def verify(program: "Program") -> Verdict:
    """Compare a batched run of 3 particles with 3 unbatched runs; fall back to vmap, then the loop."""
    reason = _batched_mismatch(program)
    if not reason:
        return Verdict(VECTORIZED)
    vmap_problem = _vmap_mismatch(program)
    if not vmap_problem:
        return Verdict(VMAP, reason)
    return Verdict(LOOP, f"{reason}; torch.func.vmap cannot run it either: {vmap_problem}")


def _batched_mismatch(program: "Program") -> str:
    """Why the batched run is not 3 independent runs ('' when it is)."""
    n = _CHECK_PARTICLES
    try:
        trace, density = program.run_batched(n, ImproperInitMessenger())
    except PPLError as e:
        return _first_line(e)
    singles = _latent_rows(trace, n)
    if isinstance(singles, str):
        return singles
    shared = _subsample_values(trace)
    for i in range(n):
        try:
            one, one_density = program.run_single(FixMessenger({k: v[i] for k, v in singles.items()}, shared))
        except PPLError as e:
            return f"an unbatched run with particle {i}'s values failed: {_first_line(e)}"
        problem = _compare(trace, density.site_terms, i, one, one_density.site_terms)
        if problem:
            return problem
    return ""


def _latent_rows(trace: Trace, n: int):
    """Each latent site's batched value, particles first, or a sentence saying which one is not."""
    rows = {}
    for name, site in trace.nodes.items():
        if not is_latent(site):
            continue
        value = site["value"]
        if value.dim() == 0 or value.shape[0] != n:
            return (f"site {name!r} has shape {tuple(value.shape)} in a batched run of {n} particles: "
                    "its value does not carry the particle dimension first")
        rows[name] = value
    return rows


def _subsample_values(trace: Trace) -> Dict[str, torch.Tensor]:
    return {name: site["value"] for name, site in trace.nodes.items()
            if site["type"] == "sample" and not is_sample(site)}


def _compare(batched: Trace, batched_terms, i: int, single: Trace, single_terms) -> str:
    """Particle ``i`` of a batched run against its unbatched run: same sites, densities, values."""
    names = [k for k, s in batched.nodes.items() if is_sample(s)]
    names_single = [k for k, s in single.nodes.items() if is_sample(s)]
    if names != names_single:
        raise VariableStructureError(
            f"the model's sites vary between runs with the same values: {names} in one run, {names_single} in "
            "another (a site that appears or is skipped by Python control flow on something other than the "
            "values of earlier sites); the engines here need the same sites in every run"
        )
    for name in names:
        if name in batched_terms or name in single_terms:
            a = batched_terms[name][i] if batched_terms[name].dim() > 0 else batched_terms[name]
            b = single_terms[name]
            if not _close(a, b):
                return (f"site {name!r}: particle {i}'s log density is {float(a):.6g} in the batched run but "
                        f"{float(b):.6g} when the model runs for that particle alone (the batched run mixes "
                        "particles or broadcasts the particle dimension into the model's own dimensions)")
        if not is_latent(batched.nodes[name]) and not is_observation(batched.nodes[name]):  # deterministic
            a, b = batched.nodes[name]["value"], single.nodes[name]["value"]
            a = a[i] if a.dim() > 0 and a.shape[0] == _CHECK_PARTICLES else a
            if a.numel() != b.numel() or not _close(a.reshape(-1), b.reshape(-1)):
                return f"deterministic site {name!r} differs between the batched run and an unbatched run"
    return ""


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to summation-order rounding in the model's dtype."""
    tol = 1e-9 if a.dtype == torch.float64 and b.dtype == torch.float64 else 1e-4
    a, b = a.detach().double(), b.detach().double().to(a.device)
    return bool(torch.isclose(a, b, rtol=tol, atol=tol, equal_nan=True).all())


def _vmap_mismatch(program: "Program") -> str:
    """Why a vmapped density run disagrees with the loop or fails ('' when it matches)."""
    n = _CHECK_PARTICLES
    try:
        trace, _ = run_per_particle(program, n, (ImproperInitMessenger(),), use_vmap=False)
        values = {name: site["value"] for name, site in trace.nodes.items() if is_latent(site)}
        _, looped = run_per_particle(program, n, (FixMessenger(values),), use_vmap=False)
        _, vmapped = run_per_particle(program, n, (FixMessenger(values),), use_vmap=True)
    except Exception as e:  # noqa: BLE001 - any failure under vmap means: use the loop
        return _first_line(e)
    for name, v in looped.site_terms.items():
        if name not in vmapped.site_terms or not _close(v, vmapped.site_terms[name]):
            return f"site {name!r} has another log density under vmap"
    return ""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return first if isinstance(e, PPLError) else f"{type(e).__name__}: {first}"


# ---------------------------------------------------------------------------------------- running
class StackedDensity:
    """Per-particle log-density terms of a per-particle run, as :class:`LogDensityMessenger` has them."""

    def __init__(self, terms: Dict[str, torch.Tensor], site_terms: Dict[str, torch.Tensor]) -> None:
        self.terms = terms
        self.site_terms = site_terms

    def get(self, role: str):
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {ROLES}")
        return self.terms.get(role, 0.0)

    @property
    def log_joint(self):
        return self.get("prior") + self.get("likelihood")


def run_per_particle(program: "Program", n: int, handlers: Sequence[Messenger], use_vmap: bool,
                     pointwise: bool = False) -> Tuple[Trace, StackedDensity]:
    """Run the model once per particle (looped, or under ``torch.func.vmap``) and stack the runs.

    ``use_vmap`` applies only when the handlers give every latent site its value (a density
    evaluation); a run that draws values is looped, since vmapped random draws are not supported
    for Pyro's samplers. ``pointwise`` also records each observed site's pointwise
    log-likelihood (``infer[POINTWISE]``), computed with each particle's own distribution.
    """
    states = [_state(h, n) for h in handlers]
    given = set().union(*[s.keys() for s in states if s is not None]) if states else set()
    draws = any(name not in given for name in program.unbatched_latent_names())
    if use_vmap and not draws:
        return _vmapped(program, n, handlers, states, pointwise)
    if use_vmap and program.vmap_draws is not False:
        try:
            with _vmappable_samplers():
                out = _vmapped(program, n, handlers, states, pointwise, draws=True)
            program.vmap_draws = True
            return out
        except Exception:  # noqa: BLE001 - a sampler vmap cannot run: draw on the loop from now on (a real
            # error of the model shows up there again)
            program.vmap_draws = False
    return _looped(program, n, handlers, states, pointwise)


def _state(handler: Messenger, n: int) -> Optional[Dict[str, torch.Tensor]]:
    get = getattr(handler, "particle_state", None)
    if get is None:
        if getattr(handler, "holds_particle_values", False) or _per_particle_beta(handler):
            raise ModelError(
                f"the handler {type(handler).__name__} holds per-particle values but has no per-particle form, "
                "so this engine cannot run a model that does not broadcast over particles; write the model to "
                "broadcast (see docs/getting-started.md) or use an engine built on the unconstrained target "
                "(nuts, hmc, tempered-smc, vi)"
            )
        return None
    state = get()
    for key, value in state.items():
        if value.dim() == 0 or value.shape[0] not in (1, n):
            raise ModelError(f"{type(handler).__name__}: value for {key!r} has shape {tuple(value.shape)}; "
                             f"expected {n} (or 1) rows, one per particle")
    return state


def _per_particle_beta(handler: Messenger) -> bool:
    beta = getattr(handler, "beta", None)
    return isinstance(beta, torch.Tensor) and beta.dim() > 0


def _rows(state: Dict[str, torch.Tensor], i) -> Dict[str, torch.Tensor]:
    return {k: v[0] if v.shape[0] == 1 else v[i] for k, v in state.items()}


def _particle_handlers(handlers, states, rows) -> List[Messenger]:
    return [h if s is None else h.with_particle_state(r) for h, s, r in zip(handlers, states, rows)]


def _looped(program, n, handlers, states, pointwise) -> Tuple[Trace, StackedDensity]:
    outputs, template = [], None
    for i in range(n):
        rows = [None if s is None else _rows(s, i) for s in states]
        trace, density = program.run_single(*_particle_handlers(handlers, states, rows))
        outputs.append(_harvest(program, trace, density, pointwise))
        template = trace if template is None else template
    stacked = tree_map(lambda *xs: torch.stack(xs), *outputs) if n > 1 else tree_map(lambda x: x.unsqueeze(0), outputs[0])
    return _assemble(program, template, stacked, n)


def _vmapped(program, n, handlers, states, pointwise, draws: bool = False) -> Tuple[Trace, StackedDensity]:
    template, _ = program.run_single(*_particle_handlers(handlers, states, [None if s is None else _rows(s, 0) for s in states]))
    # rows of size 1 are shared: pass them unbatched (in_dims None) rather than expanding them
    per_row = [None if s is None else {k: v for k, v in s.items() if v.shape[0] == n} for s in states]
    shared = [None if s is None else {k: v[0] for k, v in s.items() if v.shape[0] != n} for s in states]

    extra = (_IcdfSampler(),) if draws else ()

    def one(rows, _):
        merged = [None if r is None else {**c, **r} for r, c in zip(rows, shared)]
        # the sampler is outermost: Pyro processes innermost first, so every handler that gives a value acts before it
        trace, density = program.run_single(*extra, *_particle_handlers(handlers, states, merged))
        return _harvest(program, trace, density, pointwise)

    # "different": each particle its own draws; random ops vmap cannot batch raise rather than repeat
    stacked = torch.func.vmap(one, randomness="different" if draws else "error")(per_row, torch.empty(n))
    return _assemble(program, template, stacked, n)


class _IcdfSampler(Messenger):
    """Under vmap, draws a latent site by its inverse CDF when its own sampler uses in-place noise
    (Exponential, Cauchy, Laplace: ``new(shape).exponential_()``), which vmap cannot give per particle."""

    def _process_message(self, msg) -> None:
        if not is_latent(msg) or msg["done"] or msg["value"] is not None or cannot_sample(msg["fn"]):
            return
        fn = msg["fn"]
        try:
            msg["value"] = fn(*msg["args"], **msg["kwargs"])
        except RuntimeError:
            msg["value"] = _draw_out_of_place(fn)  # NotImplementedError: the loop takes over
        msg["done"] = True


def _draw_out_of_place(fn) -> torch.Tensor:
    """One draw of ``fn`` with out-of-place random ops only: gamma ratios for Beta / Dirichlet (whose
    samplers are autograd Functions that vmap refuses), the inverse CDF for the rest."""
    base = fn
    while hasattr(base, "base_dist"):  # Independent / Expanded / Masked: same draw, reshaped
        base = base.base_dist
    shape = fn.shape()
    if isinstance(base, torch.distributions.Dirichlet):
        g = torch._standard_gamma(base.concentration.expand(shape))
        return g / g.sum(-1, keepdim=True)
    if isinstance(base, torch.distributions.Beta):
        g1 = torch._standard_gamma(base.concentration1.expand(shape))
        g0 = torch._standard_gamma(base.concentration0.expand(shape))
        return g1 / (g1 + g0)
    return fn.icdf(torch.rand(shape))


@contextlib.contextmanager
def _vmappable_samplers():
    """Torch's Normal-family samplers draw noise in place (``empty(shape).normal_()``), which vmap
    refuses per particle; for the duration of a vmapped simulation they draw it out of place."""
    import torch.distributions as td

    def standard_normal(shape, dtype, device):
        return torch.randn(shape, dtype=dtype, device=device)

    modules = [td.normal, td.multivariate_normal, td.lowrank_multivariate_normal, td.studentT]
    saved = [m._standard_normal for m in modules]
    for m in modules:
        m._standard_normal = standard_normal
    try:
        yield
    finally:
        for m, f in zip(modules, saved):
            m._standard_normal = f



def _harvest(program: "Program", trace: Trace, density, pointwise: bool) -> Dict[str, Any]:
    """The tensors of one unbatched run, each site's laid out as in a batched run (K batch dims)."""
    k = program.max_plate_nesting
    values, infers, pointwise_terms = {}, {}, {}
    for name, site in trace.nodes.items():
        if not is_sample(site):
            continue
        batch_shape = site_batch_shape(site)
        pad = k - len(batch_shape)
        values[name] = _pad(site["value"], pad)
        infers[name] = {key: _pad(v, pad) for key, v in site["infer"].items() if isinstance(v, torch.Tensor)}
        if pointwise and is_observation(site) and not site["infer"].get("is_auxiliary", False):
            with program.defaults():  # validation as in the run itself
                log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
            log_p = scale_and_mask(log_p, 1.0, site["mask"])
            pointwise_terms[name] = _pad(log_p.expand(batch_shape), pad)
    zero = _zero(trace)
    return {
        "terms": {role: zero + density.terms[role] for role in density.terms},
        "site_terms": {name: zero + v for name, v in density.site_terms.items()},
        "values": values, "infer": infers, "pointwise": pointwise_terms,
    }


def site_batch_shape(site) -> torch.Size:
    """A site's batch shape in an unbatched run, widened to its value's where the value broadcasts
    beyond the distribution (data with extra dimensions and no plate)."""
    fn, value = site["fn"], site["value"]
    event_dim = value.dim() if site["infer"].get("_deterministic", False) else len(fn.event_shape)
    return torch.broadcast_shapes(tuple(fn.batch_shape), tuple(value.shape[: max(value.dim() - event_dim, 0)]))


def _pad(value: torch.Tensor, pad: int) -> torch.Tensor:
    value = torch.as_tensor(value)
    return value.reshape((1,) * max(pad, 0) + tuple(value.shape))


def _zero(trace: Trace) -> torch.Tensor:
    for site in trace.nodes.values():
        if isinstance(site.get("value"), torch.Tensor) and site["value"].is_floating_point():
            return site["value"].new_zeros(())
    return torch.zeros(())


def _assemble(program: "Program", template: Trace, stacked: Dict[str, Any], n: int) -> Tuple[Trace, StackedDensity]:
    """A trace shaped like a batched run's, from an unbatched template and stacked tensors."""
    frame = CondIndepStackFrame(name=PARTICLE_PLATE, dim=-(program.max_plate_nesting + 1), size=n, counter=0, full_size=n)
    trace = Trace()
    for name, site in template.nodes.items():
        site = dict(site)
        if name in stacked["values"]:
            site["value"] = stacked["values"][name]
            site["infer"] = {**site["infer"], **stacked["infer"][name]}
            if name in stacked["pointwise"]:
                site["infer"][POINTWISE] = stacked["pointwise"][name]
            site["cond_indep_stack"] = (frame,) + tuple(site["cond_indep_stack"])
        trace.add_node(name, **{key: v for key, v in site.items() if key != "name"})
    return trace, StackedDensity(stacked["terms"], stacked["site_terms"])


def warn_loop(program: "Program", reason: str) -> None:
    """The one warning of a program that runs on the per-particle loop."""
    warnings.warn(
        f"the model {program.name!r} does not broadcast over a particle dimension ({reason}), so ppl runs it "
        "once per particle: correct but slower, about one model run per particle or chain per evaluation. "
        "To make it fast, write it to broadcast (docs/getting-started.md: 'Write any Pyro model').",
        BatchingWarning, stacklevel=3)
