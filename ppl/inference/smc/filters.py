"""Particle filters for state-space models written as Pyro programs in step form.

The model is an ``init(*init_args)`` program returning the state (a dict of tensors) and a
``step(state, t, y_t, **step_kwargs)`` program returning the next state; each is run once per
time step, batched over all particles, under the core handlers. Observed sites give log G_t;
a ``proposal(state, t, y_t, **step_kwargs)`` program gives the guided filter, a lookahead
``log_eta(state, t, y_next)`` the auxiliary filter. Smoothing: genealogy tracing or FFBS.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
from pyro.poutine.messenger import Messenger

from ppl.errors import ModelError
from ppl.handlers import ProposeMessenger
from ppl.handlers._sites import is_latent
from ppl.inference.program import Program, guess_max_plate_nesting
from ppl.inference.registry import register_engine
from ppl.inference.result import Result, log_mean_exp_with_se
from ppl.inference.runtime import Seed, move, resolve_device
from ppl.inference.smc.feynman_kac import FeynmanKac, SMCOutput, State, StateShapeError, ffbs, run_smc


class _FixLatents(Messenger):
    """Latent sites named in ``values`` take those (batched) values: used to evaluate m_t(x_t | x_{t-1})."""

    def __init__(self, values: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.values = values

    def _process_message(self, msg) -> None:
        if is_latent(msg) and msg["name"] in self.values and not msg["done"]:
            msg["value"] = self.values[msg["name"]]
            msg["done"] = True


class _ZeroLogProb:
    """Stands in for a latent site's distribution so the accounting skips its (unused) log density.

    The bootstrap filter's weight is the likelihood alone; computing each latent's prior log
    density every step is an O(N) pass per site for nothing. Anything else is read from the base.
    """

    def __init__(self, base: Any) -> None:
        self.base = base

    def log_prob(self, value: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return value.new_zeros(())

    def __getattr__(self, name: str) -> Any:
        if name == "base":  # not yet set (e.g. during copying): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)


class _SkipLatentLogProb(Messenger):
    """Outside the log-density accounting: latent sites contribute 0 to the prior (bootstrap weights only)."""

    def _postprocess_message(self, msg) -> None:
        if is_latent(msg) and not isinstance(msg["fn"], _ZeroLogProb):
            msg["fn"] = _ZeroLogProb(msg["fn"])


def _as_state(value: Any, n: int, t: int, what: str) -> State:
    """The program's return value as a state dict with the particles on dim 0 of every entry."""
    if not isinstance(value, dict):
        raise StateShapeError(f"step {t}: the {what} program must return a dict of tensors, got {type(value).__name__}")
    out = {}
    for k, v in value.items():
        if not isinstance(v, torch.Tensor):
            raise StateShapeError(f"step {t}: state[{k!r}] returned by the {what} program is a {type(v).__name__}, not a tensor")
        if v.dim() == 0 or v.shape[0] != n:
            try:
                v = v.expand((n,) + tuple(v.shape[1:] if v.dim() > 0 and v.shape[0] == 1 else v.shape))
            except RuntimeError:
                raise StateShapeError(
                    f"step {t}: state[{k!r}] returned by the {what} program has shape {tuple(v.shape)}, "
                    f"which does not carry the {n} particles on dim 0"
                ) from None
        out[k] = v
    return out


def _as_batch(x: Any, n: int, ref: torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.expand(n) if x.dim() == 0 else x
    return torch.full((n,), float(x), dtype=ref.dtype, device=ref.device)


class StateSpaceFK(FeynmanKac):
    """A state-space model in step form as a Feynman–Kac model (bootstrap or guided).

    ``data`` is a tensor (T, ...) or a sequence of T observations. Latent sites of the step are
    recorded per step (their values, particle dim first) so trajectories carry site names.
    """

    def __init__(
        self,
        init: Callable[..., Dict[str, torch.Tensor]],
        step: Callable[..., Dict[str, torch.Tensor]],
        data: Any,
        *,
        init_args: Sequence[Any] = (),
        init_kwargs: Optional[Mapping[str, Any]] = None,
        step_kwargs: Optional[Mapping[str, Any]] = None,
        proposal: Optional[Callable[..., Any]] = None,
        max_plate_nesting: Optional[int] = None,
        device: Optional[Any] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        if not callable(init) or not callable(step):
            raise TypeError("a step-form model needs callable init and step programs")
        self.init_fn, self.step_fn, self.proposal = init, step, proposal
        self.device = resolve_device(device, data, init_args, init_kwargs, step_kwargs)
        self.dtype = dtype
        self.data = move(data, self.device, dtype)
        self.num_steps = len(self.data)
        if self.num_steps < 1:
            raise ValueError("data must hold at least one observation")
        self.init_args = tuple(move(list(init_args), self.device, dtype))
        self.init_kwargs = move(dict(init_kwargs or {}), self.device, dtype)
        self.step_kwargs = move(dict(step_kwargs or {}), self.device, dtype)
        self._nesting = max_plate_nesting
        self._last_terms: Dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ running programs
    @property
    def max_plate_nesting(self) -> int:
        """Plate depth, found once from an unbatched run of init and of step at t=0."""
        if self._nesting is None:
            p0 = Program(self.init_fn, self.init_args, self.init_kwargs, max_plate_nesting=0, device=self.device, dtype=self.dtype)
            tr0 = p0.trace_unbatched()
            state = tr0.nodes["_RETURN"]["value"]
            p1 = Program(self.step_fn, (state, 0, self.data[0]), self.step_kwargs, max_plate_nesting=0, device=self.device, dtype=self.dtype)
            self._nesting = max(guess_max_plate_nesting(tr0), guess_max_plate_nesting(p1.trace_unbatched()))
        return self._nesting

    def _program(self, fn: Callable, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Program:
        # the arguments (the previous state) already carry the particle dimension, so a run cannot be
        # checked against per-particle runs here: the step function must broadcast (docs/smc.md)
        return Program(fn, args, kwargs, max_plate_nesting=self.max_plate_nesting, device=self.device,
                       dtype=self.dtype, batching="vectorized")

    def _run_step(self, n: int, state: Optional[State], t: int):
        """Run step t (after init at t=0) batched; return (state, log_g, record of latent sites)."""
        args = (state, t, self.data[t])
        handlers: list = []
        if self.proposal is not None:
            qtrace, _ = self._program(self.proposal, args, self.step_kwargs).run(n)
            propose = ProposeMessenger(qtrace)
            handlers.append(propose)
        else:
            handlers.append(_SkipLatentLogProb())
        trace, density = self._program(self.step_fn, args, self.step_kwargs).run(n, *handlers)
        if self.proposal is not None:
            propose.check_all_used()
        self._last_terms = density.site_terms
        new = _as_state(trace.nodes["_RETURN"]["value"], n, t, "step")
        ref = next(iter(new.values())) if new else torch.zeros((), device=self.device)
        log_g = _as_batch(density.get("likelihood"), n, ref)
        if self.proposal is not None:
            log_g = log_g + _as_batch(density.get("prior"), n, ref) - _as_batch(density.get("proposal"), n, ref)
        record = {name: _lead(site["value"], n) for name, site in trace.nodes.items() if is_latent(site)}
        return new, log_g, record

    def init(self, n: int):
        trace, _ = self._program(self.init_fn, self.init_args, self.init_kwargs).run(n, _SkipLatentLogProb())
        state = _as_state(trace.nodes["_RETURN"]["value"], n, 0, "init")
        rec0 = {name: _lead(site["value"], n) for name, site in trace.nodes.items() if is_latent(site)}
        state, log_g, record = self._run_step(n, state, 0)
        return state, log_g, {**rec0, **record}

    def step(self, t: int, state: State):
        return self._run_step(next(iter(state.values())).shape[0] if state else 1, state, t)

    def explain(self, t: int) -> str:
        bad = [f"{k}" for k, v in self._last_terms.items() if not bool(torch.isfinite(v).all())]
        return f"site(s) {bad}" if bad else ""

    def log_transition(self, t: int, prev: State, record: Dict[str, torch.Tensor]) -> torch.Tensor:
        """log m_t: the step program's prior term with its latents fixed to ``record``'s values."""
        n = next(iter(prev.values())).shape[0]
        _, density = self._program(self.step_fn, (prev, t, self.data[t]), self.step_kwargs).run(n, _FixLatents(record))
        ref = next(iter(prev.values()))
        return _as_batch(density.get("prior"), n, ref)


def _lead(v: torch.Tensor, n: int) -> torch.Tensor:
    return v if v.dim() > 0 and v.shape[0] == n else v.expand((n,) + tuple(v.shape))


# ---------------------------------------------------------------------------------------- results
def smc_result(
    out: SMCOutput,
    engine: str,
    *,
    fk: Optional[FeynmanKac] = None,
    smoothing: str = "genealogy",
    system: Optional[int] = 0,
    attrs: Optional[Dict[str, Any]] = None,
    extra_diagnostics: Optional[Dict[str, Any]] = None,
) -> Result:
    """A :class:`Result` from a filter run: final weighted particles, with each recorded site's value.

    With ``smoothing="genealogy"`` (and history) samples hold every recorded site traced back
    along the final particles' ancestry (weighted by the final weights); ``"ffbs"`` gives N
    equally weighted backward-sampled trajectories; ``"none"`` the final state only.
    ``system=None`` pools all independent systems of the run (see :func:`pooled_log_evidence`).
    """
    if system is None and out.num_systems == 1:
        system = 0
    if system is None:
        return _pooled_result(out, engine, fk=fk, smoothing=smoothing, attrs=attrs, extra_diagnostics=extra_diagnostics)
    N = out.num_particles
    sl = slice(system * N, (system + 1) * N)
    lw = out.log_weights[system].detach()
    samples: Dict[str, torch.Tensor] = {}
    log_weights: Optional[torch.Tensor] = lw.unsqueeze(0)
    if smoothing == "ffbs":
        if fk is None:
            raise ValueError("smoothing='ffbs' needs the Feynman–Kac model")
        paths = ffbs(fk, out, N, system=system)
        log_weights = None
        for k, v in paths.items():
            samples.update(_split_path(k, v, out))
    elif smoothing == "genealogy" and out.records:
        idx = torch.arange(sl.start, sl.stop, device=lw.device)
        for k, v in out.trajectories(idx).items():
            samples.update(_split_path(k, v, out))
    else:
        for k, v in out.state.items():
            samples[k] = v[sl].detach()
    samples = {k: v.detach().unsqueeze(0) for k, v in samples.items()}
    diagnostics = {
        "ess": out.ess[:, system].detach().cpu(),
        "resampled": out.resampled[:, system].cpu(),
        "log_evidence": out.log_evidence_history[:, system].detach().cpu(),
    }
    diagnostics.update(extra_diagnostics or {})
    return Result(
        engine=engine,
        samples=samples,
        log_weights=log_weights,
        log_evidence=float(out.log_evidence[system]),
        log_evidence_se=float(out.log_evidence_se[system]),
        diagnostics=diagnostics,
        attrs=dict(attrs or {}, particles=N, num_resampling=int(out.resampled[:, system].sum()),
                   log_evidence_se_method=FIXED_LAG if _fixed_lag(out, system) else LEE_WHITELEY),
    )


LEE_WHITELEY = "lee-whiteley"
"""``attrs["log_evidence_se_method"]`` of one particle system: the Eve-index (genealogy) estimator,
exact in expectation only for multinomial resampling at every step; reads low otherwise (docs/smc.md)."""
FIXED_LAG = "fixed-lag"
"""``attrs["log_evidence_se_method"]`` when every final particle descended from one time-0 particle (the
Eve estimator is then infinite): the fixed-lag genealogy estimator, which reads low (docs/smc.md)."""
SYSTEMS = "systems"
"""``attrs["log_evidence_se_method"]`` with ``systems=S > 1``: the spread of S independent log Z estimates."""


def _fixed_lag(out: SMCOutput, system: int) -> bool:
    return out.se_fixed_lag is not None and bool(out.se_fixed_lag[system])


def pooled_log_evidence(out: SMCOutput) -> Tuple[float, float]:
    """log of the mean of the S independent evidence estimates and its standard error from their spread.

    The mean of unbiased estimates is unbiased (in evidence scale); the se is the delta-method
    se of a log-mean-exp over S i.i.d. terms, free of the genealogy estimator's assumptions.
    """
    return log_mean_exp_with_se(out.log_evidence.detach())


def _pooled_result(out: SMCOutput, engine: str, *, fk, smoothing, attrs, extra_diagnostics) -> Result:
    """All S systems as one weighted sample: particle (s, i) has weight Z_s W_{s,i} (normalised over all)."""
    if smoothing == "ffbs":
        raise ValueError("smoothing='ffbs' pools no systems: run FFBS with systems=1 (or call ffbs(..., system=s))")
    S, N = out.num_systems, out.num_particles
    lw = out.log_weights.detach()
    lw = (lw - torch.logsumexp(lw, -1, keepdim=True) + out.log_evidence.detach()[:, None]).reshape(1, S * N)
    samples: Dict[str, torch.Tensor] = {}
    if smoothing == "genealogy" and out.records:
        for k, v in out.trajectories().items():
            samples.update(_split_path(k, v, out))
    else:
        samples = {k: v for k, v in out.state.items()}
    log_z, se = pooled_log_evidence(out)
    diagnostics = {
        "ess": out.ess.detach().T.cpu(),  # (system, step)
        "resampled": out.resampled.T.cpu(),
        "log_evidence": out.log_evidence_history.detach().T.cpu(),
    }
    diagnostics.update(extra_diagnostics or {})
    return Result(
        engine=engine,
        samples={k: v.detach().unsqueeze(0) for k, v in samples.items()},
        log_weights=lw,
        log_evidence=log_z,
        log_evidence_se=se,
        diagnostics=diagnostics,
        attrs=dict(attrs or {}, particles=N, systems=S, num_resampling=int(out.resampled.sum()),
                   log_evidence_se_method=SYSTEMS),
    )


def _split_path(name: str, path: torch.Tensor, out: SMCOutput) -> Dict[str, torch.Tensor]:
    """A path (M, T', ...) of a site recorded once per run keeps its name; state keys stay paths."""
    if path.shape[1] == 1:
        return {name: path[:, 0]}
    return {name: path}


# ---------------------------------------------------------------------------------------- filters
def particle_filter(
    init: Callable[..., Any],
    step: Callable[..., Any],
    data: Any,
    *,
    particles: int = 1000,
    proposal: Optional[Callable[..., Any]] = None,
    log_eta: Optional[Callable[..., torch.Tensor]] = None,
    init_args: Sequence[Any] = (),
    init_kwargs: Optional[Mapping[str, Any]] = None,
    step_kwargs: Optional[Mapping[str, Any]] = None,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    smoothing: str = "genealogy",
    retries: int = 0,
    systems: int = 1,
    seed: Seed = None,
    device: Optional[Any] = None,
    dtype: Optional[torch.dtype] = None,
    max_plate_nesting: Optional[int] = None,
) -> Result:
    """Bootstrap (default), guided (``proposal``) or auxiliary (``log_eta``) particle filter.

    ``log_eta(state, t, y_next) -> (N,)`` is the auxiliary filter's lookahead, an approximation
    of log p(y_{t+1} | x_t); it reweights before resampling and is divided out afterwards, so
    log Z stays unbiased. ``retries`` reruns with twice the particles when all weights vanish.
    ``systems=S > 1`` runs S independent filters in one batch and pools them: log Z is the log of
    the mean of the S estimates and its se comes from their spread (robust; the single-system se
    is the Lee–Whiteley estimator, which reads low with systematic / adaptive resampling).
    Returns a :class:`Result` (see :func:`smc_result`).
    """
    start = time.perf_counter()
    fk: FeynmanKac = StateSpaceFK(init, step, data, init_args=init_args, init_kwargs=init_kwargs,
                                  step_kwargs=step_kwargs, proposal=proposal, max_plate_nesting=max_plate_nesting,
                                  device=device, dtype=dtype)
    base_fk = fk
    if log_eta is not None:
        from ppl.inference.smc.twisted import TwistedFK

        data_ = fk.data  # type: ignore[attr-defined]
        fk = TwistedFK(fk, lambda t, state: log_eta(state, t, data_[t + 1]))
    kind = "guided" if proposal is not None else ("auxiliary" if log_eta is not None else "bootstrap")
    if int(systems) < 1:
        raise ValueError(f"systems must be a positive integer, got {systems!r}")
    out = run_with_retries(fk, particles, retries, systems=int(systems), resampling=resampling,
                           ess_threshold=ess_threshold, seed=seed, device=base_fk.device)  # type: ignore[attr-defined]
    if smoothing == "ffbs" and log_eta is not None:
        raise ValueError("FFBS needs the untwisted filtering weights; use smoothing='genealogy' with log_eta")
    return smc_result(out, "pf", fk=base_fk, smoothing=smoothing, system=None,
                      attrs={"filter": kind, "runtime_s": time.perf_counter() - start, "resampling": resampling})


def run_with_retries(fk: FeynmanKac, particles: int, retries: int = 0, **kwargs: Any) -> SMCOutput:
    """:func:`run_smc`, rerun with twice the particles (up to ``retries`` times) when all weights vanish."""
    from ppl.inference.resampling import ZeroWeightError

    n = int(particles)
    for attempt in range(int(retries) + 1):
        try:
            return run_smc(fk, n, **kwargs)
        except ZeroWeightError:
            if attempt == retries:
                raise
            n *= 2
    raise AssertionError("unreachable")


STEP_FORMS: Dict[Any, Dict[str, Any]] = {}
"""Whole programs with a known step form (program -> dict(init, step, data=fn(kwargs) -> (data, kwargs), proposal))."""


def register_step_form(program: Callable, init: Callable, step: Callable, data: Optional[Callable] = None,
                       proposal: Optional[Callable] = None) -> None:
    """Let the ``pf`` engine (and the CLI) run ``program`` through its step form ``init`` / ``step``."""
    STEP_FORMS[program] = {"init": init, "step": step, "data": data, "proposal": proposal}


def _builtin_step_forms() -> None:
    from ppl.models import char_lm as _lm
    from ppl.models import lgssm as _lg

    if _lg.lgssm not in STEP_FORMS:
        register_step_form(_lg.lgssm, _lg.lgssm_init, _lg.lgssm_step)
    if _lm.char_lm not in STEP_FORMS:
        register_step_form(_lm.char_lm, _lm.char_lm_init, _lm.char_lm_step,
                           data=lambda kw: ([None] * int(kw.pop("length", 12)), kw),
                           proposal=_lm.steering_proposal)


def _step_form(model: Any):
    """(init, step, data function, proposal) from a dict, an object with init/step, or a registered program."""
    if isinstance(model, Mapping):
        return model.get("init"), model.get("step"), model.get("data"), model.get("proposal")
    if hasattr(model, "init") and hasattr(model, "step"):
        return model.init, model.step, getattr(model, "data", None), getattr(model, "proposal", None)
    try:
        _builtin_step_forms()
    except ImportError:  # pragma: no cover - models package unavailable
        pass
    if model in STEP_FORMS:
        f = STEP_FORMS[model]
        return f["init"], f["step"], f["data"], f["proposal"]
    raise ModelError(
        f"the 'pf' engine needs a model in step form (an object or dict with 'init' and 'step' "
        f"programs, or a program registered with register_step_form), got "
        f"{getattr(model, '__name__', type(model).__name__)!r}; for a whole program with a loop of "
        "observations use the 'smc' engine (program SMC with a barrier per observation)"
    )


@register_engine("pf", "particle filter for state-space models in step form (init / step programs)")
def pf(
    model: Any,
    *args: Any,
    particles: int = 1000,
    seed: Seed = None,
    device: Optional[Any] = None,
    dtype: Optional[torch.dtype] = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    smoothing: str = "genealogy",
    systems: int = 1,
) -> Result:
    """Engine form of :func:`particle_filter`: ``model`` has ``init``, ``step`` and (or ``model_kwargs``) ``data``.

    ``model_kwargs`` may hold ``y`` / ``data`` (the observations) plus keyword arguments of
    ``step`` (e.g. ``a``, ``q``, ``r`` for the LGSSM); init gets those it accepts.
    """
    init, step, data, proposal = _step_form(model)
    kwargs = dict(model_kwargs or {})
    if callable(data):
        data, kwargs = data(kwargs)
    elif data is None:
        data = kwargs.pop("data", None)
        if data is None:
            data = kwargs.pop("y", None)
    else:
        kwargs.pop("data", None)
    if data is None:
        raise ValueError("the 'pf' engine needs observations: pass data= in the model or y= / data= in model_kwargs")
    import inspect

    def accepted(fn):
        params = inspect.signature(fn).parameters
        if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return dict(kwargs)
        return {k: v for k, v in kwargs.items() if k in params}

    return particle_filter(init, step, data, particles=particles, proposal=proposal, init_args=args,
                           init_kwargs=accepted(init), step_kwargs=accepted(step), resampling=resampling,
                           ess_threshold=ess_threshold, smoothing=smoothing, systems=systems, seed=seed,
                           device=device, dtype=dtype)
