"""SMC over a whole Pyro program: a barrier after each observation, the resampled past replayed.

Stage k re-executes the program batched over all particles, with every latent value drawn in
earlier stages replayed (reordered by the ancestors, as ``ResampleMessenger`` does), new latents
drawn from the prior, and a barrier that stops right after the k-th observation. The weight
increment is the likelihood the stage added. Each stage re-runs the program from the start, so
K observations cost O(K^2) site visits: prefer the step form (``particle_filter``) for long
sequences, where each step costs O(1).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Mapping, Optional

import torch
from pyro.poutine.trace_messenger import TraceMessenger

from ppl.handlers import LogDensityMessenger
from ppl.handlers._sites import is_latent, is_observation
from ppl.handlers.barrier import BarrierMessenger
from ppl.inference.program import ModelError, Program
from ppl.inference.registry import register_engine
from ppl.inference.result import Result
from ppl.inference.runtime import Seed
from ppl.inference.smc.feynman_kac import FeynmanKac, State
from ppl.inference.smc.filters import _FixLatents, _lead, run_with_retries

_LIK = "__likelihood__"


class ProgramFK(FeynmanKac):
    """A program with K observation sites as a K-step Feynman–Kac model (bootstrap proposals).

    The state is every latent value drawn so far (site name -> batched value) plus the
    cumulative likelihood; it grows from stage to stage. ``last_trace`` is the final stage's trace.
    """

    fixed_state_shapes = False

    def __init__(self, program: Program) -> None:
        self.program = program
        trace = program.trace_unbatched()
        self.observations = [name for name, site in trace.nodes.items() if site["type"] == "sample" and is_observation(site)]
        if not self.observations:
            raise ModelError(f"the model {program.name!r} has no observed sites: program SMC puts a barrier after "
                             "each observation; use importance sampling or tempered SMC instead")
        self.num_steps = len(self.observations)
        self.last_trace = None
        self._terms: Dict[str, torch.Tensor] = {}

    def _stage(self, n: int, t: int, values: Mapping[str, torch.Tensor]):
        tracer, density = TraceMessenger(), LogDensityMessenger()
        last = t == self.num_steps - 1
        stop = BarrierMessenger(None if last else t + 1)
        stop.call(self.program.run, n, tracer, density, stop, _FixLatents(values))
        trace = tracer.get_trace()
        self._terms = density.site_terms
        state = {name: _lead(site["value"], n) for name, site in trace.nodes.items() if is_latent(site)}
        lik = density.get("likelihood")
        ref = next(iter(state.values())) if state else torch.zeros(())
        if not isinstance(lik, torch.Tensor):
            lik = torch.full((n,), float(lik), dtype=ref.dtype, device=ref.device)
        state[_LIK] = lik.expand(n)
        if last:
            self.last_trace = trace
        return state

    def init(self, n: int):
        state = self._stage(n, 0, {})
        return state, state[_LIK]

    def step(self, t: int, state: State):
        n = state[_LIK].shape[0]
        prev = state[_LIK]
        new = self._stage(n, t, {k: v for k, v in state.items() if k != _LIK})
        # a particle already at zero weight stays there (-inf - -inf would be NaN)
        return new, torch.where(torch.isneginf(prev), prev, new[_LIK] - prev)

    def explain(self, t: int) -> str:
        bad = [k for k, v in self._terms.items() if not bool(torch.isfinite(v).all())]
        return f"observation {self.observations[t]!r}; non-finite site(s) {bad}" if bad else f"observation {self.observations[t]!r}"


@register_engine("smc", "SMC over the whole program: a barrier after each observation, past replayed")
def smc(
    model: Callable[..., Any],
    *args: Any,
    particles: int = 1000,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    twist: Optional[Callable[[int, Dict[str, torch.Tensor]], torch.Tensor]] = None,
    retries: int = 0,
    seed: Seed = None,
    device: Optional[Any] = None,
    dtype: Optional[torch.dtype] = None,
    max_plate_nesting: Optional[int] = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
) -> Result:
    """Program SMC: weighted particles of every site and log Z (unbiased) with its standard error.

    ``twist(k, values) -> (N,)`` is an optional log twist after observation k (values: latent
    site name -> batched value so far); the last twist is 1, keeping log Z unbiased. Cost is
    quadratic in the number of observations (each stage re-runs the program).
    """
    start = time.perf_counter()
    program = Program(model, args, model_kwargs, max_plate_nesting=max_plate_nesting, device=device, dtype=dtype)
    fk: FeynmanKac = ProgramFK(program)
    base = fk
    if twist is not None:
        from ppl.inference.smc.twisted import TwistedFK

        fk = TwistedFK(base, lambda t, state: twist(t, {k: v for k, v in state.items() if k != _LIK}))
    out = run_with_retries(fk, particles, retries, resampling=resampling, ess_threshold=ess_threshold,
                           seed=seed, device=program.device, keep_history=False)
    trace = base.last_trace  # type: ignore[attr-defined]
    return program_smc_result("smc", program, trace, out, {
        "particles": out.num_particles, "barriers": base.num_steps, "runtime_s": time.perf_counter() - start,
        **program.attrs()})


def program_smc_result(engine: str, program: Program, trace, out, attrs: Mapping[str, Any],
                       diagnostics: Optional[Mapping[str, Any]] = None) -> Result:
    """The common result of one system of an SMC run over a program: its final trace's values with the
    final weights, log Z (Lee–Whiteley se), pointwise log-likelihood, and the ESS / resampling history
    after ``diagnostics`` (e.g. a training history)."""
    samples = {k: v.detach().unsqueeze(0) for k, v in program.named_values(trace).items()}
    loglik = {k: v.detach().unsqueeze(0) for k, v in program.pointwise_log_likelihood(trace).items()}
    return Result(
        engine=engine,
        samples=samples,
        log_weights=out.log_weights[0].detach().unsqueeze(0),
        log_evidence=float(out.log_evidence[0]),
        log_evidence_se=float(out.log_evidence_se[0]),
        log_likelihood=loglik,
        observed_data=program.observed_data(),
        dims={k: s.dims for k, s in program.sites.items()},
        diagnostics={**(diagnostics or {}), "ess": out.ess[:, 0].cpu(), "resampled": out.resampled[:, 0].cpu(),
                     "log_evidence": out.log_evidence_history[:, 0].cpu()},
        attrs={**attrs, "num_resampling": int(out.resampled[:, 0].sum()), "log_evidence_se_method": "lee-whiteley"},
    )
