"""Feynman–Kac models and the one SMC driver every particle method here runs on.

A Feynman–Kac model is an initial law M0, Markov transitions M_t and log potentials log G_t on
batched particle states (dicts of tensors, particles on dim 0). :func:`run_smc` propagates,
weights and resamples them, tracking log Z (unbiased in evidence scale), its standard error
(Lee–Whiteley / Chan–Lai estimator from the Eve indices), the ESS and resampling history and the
genealogy. Several independent particle systems can run at once (``systems=S``): the model then
sees ``S * N`` particles, system ``s`` owning the rows ``s*N .. (s+1)*N - 1``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from ppl.inference.resampling import ZeroWeightError, resample
from ppl.inference.runtime import Seed, seeded

State = Dict[str, torch.Tensor]
StepOut = Union[Tuple[State, torch.Tensor], Tuple[State, torch.Tensor, Dict[str, torch.Tensor]]]


class NonFiniteWeightError(ValueError):
    """A log potential is NaN or +inf; the message names the step (and the site when known)."""


class StateShapeError(ValueError):
    """A particle state changed its keys or per-particle shapes between steps."""


class FeynmanKac:
    """Base class: ``init(n)`` draws from M0 and weights by G0; ``step(t, x)`` moves by M_t and weights by G_t.

    Both return ``(state, log_g)`` or ``(state, log_g, record)``, with ``log_g`` of shape (n,) and
    ``record`` (default: the state) what the history keeps for trajectories. ``log_transition``
    (optional) is log m_t(x_t | x_{t-1}) for aligned batches, needed by FFBS and ancestor sampling;
    ``explain(t)`` (optional) names the sites behind a bad weight at step t.
    """

    num_steps: int = 0
    fixed_state_shapes: bool = True  # False lets the state gain keys (program SMC), shapes of kept keys still fixed

    def init(self, n: int) -> StepOut:  # pragma: no cover - interface
        raise NotImplementedError

    def step(self, t: int, state: State) -> StepOut:  # pragma: no cover - interface
        raise NotImplementedError

    def log_transition(self, t: int, prev: State, record: Dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no transition density (needed by FFBS / ancestor sampling)")

    def explain(self, t: int) -> str:
        return ""


class FKModel(FeynmanKac):
    """A Feynman–Kac model from plain torch callables (the fast path, no Pyro involved).

    ``M0(n) -> state``, ``M(t, prev_state) -> state``, ``logG(t, prev_state_or_None, state) -> (n,)``
    and optionally ``log_m(t, prev_state, state) -> (n,)`` (the transition density, for FFBS and
    particle Gibbs). ``T`` is the number of steps including time 0.
    """

    def __init__(self, T: int, M0: Callable, M: Callable, logG: Callable, log_m: Optional[Callable] = None) -> None:
        if int(T) < 1:
            raise ValueError(f"T must be a positive number of steps, got {T!r}")
        self.num_steps = int(T)
        self.M0, self.M, self.logG, self.log_m = M0, M, logG, log_m

    def init(self, n: int) -> StepOut:
        x = self.M0(n)
        return x, self.logG(0, None, x)

    def step(self, t: int, state: State) -> StepOut:
        x = self.M(t, state)
        return x, self.logG(t, state, x)

    def log_transition(self, t: int, prev: State, record: Dict[str, torch.Tensor]) -> torch.Tensor:
        if self.log_m is None:
            return super().log_transition(t, prev, record)
        return self.log_m(t, prev, record)


@dataclass
class SMCOutput:
    """Everything a run of :func:`run_smc` produced; per-system tensors have a leading dim S."""

    state: State
    log_weights: torch.Tensor          # (S, N) final unnormalised log weights (normalised at t-1, times G_t)
    log_evidence: torch.Tensor         # (S,)
    log_evidence_se: torch.Tensor      # (S,)
    log_evidence_history: torch.Tensor  # (T, S) log Z_t estimates (only the last is the evidence when twisted)
    ess: torch.Tensor                  # (T, S) ESS after weighting at each step
    resampled: torch.Tensor            # (T, S) bool: resampled before step t's move
    eve: torch.Tensor                  # (S*N,) time-0 ancestor of each final particle (global index)
    num_particles: int
    num_systems: int
    ancestors: List[Optional[torch.Tensor]] = field(default_factory=list)  # per step: (S*N,) or None (identity)
    records: List[Dict[str, torch.Tensor]] = field(default_factory=list)   # per step (keep_history)
    states: List[State] = field(default_factory=list)                      # per step, before resampling
    log_weight_history: List[torch.Tensor] = field(default_factory=list)   # per step (S, N) normalised
    se_fixed_lag: Optional[torch.Tensor] = None  # (S,) bool: se from fixed_lag_se (the Eve indices had coalesced)

    @property
    def normalized_weights(self) -> torch.Tensor:
        return torch.softmax(self.log_weights, -1)

    def trajectories(self, index: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Whole paths of the recorded values by genealogy tracing: name -> (M, T, *shape).

        ``index`` picks final particles (global indices, default all); values of records that
        are missing at some step are skipped at that step (e.g. a site sampled only from t=1).
        """
        if not self.records:
            raise ValueError("no history was kept: run with keep_history=True to read trajectories")
        T = len(self.records)
        idx = torch.arange(self.num_systems * self.num_particles, device=self.log_weights.device) if index is None else index
        per_step: List[Dict[str, torch.Tensor]] = [dict() for _ in range(T)]
        for t in range(T - 1, -1, -1):
            for k, v in self.records[t].items():
                per_step[t][k] = v.index_select(0, idx.to(v.device))
            if t > 0 and self.ancestors[t] is not None:
                idx = self.ancestors[t].index_select(0, idx)
        keys = list(dict.fromkeys(k for rec in per_step for k in rec))
        out = {}
        for k in keys:
            steps = [rec[k] for rec in per_step if k in rec]
            out[k] = torch.stack(steps, 1)
        return out


def _check_state(state: Any, n: int, t: int, prev_shapes: Optional[Dict[str, Tuple[int, ...]]],
                 growing: bool = False) -> Dict[str, Tuple[int, ...]]:
    """Raise :class:`StateShapeError` unless ``state`` is a dict of (n, ...) tensors shaped as before."""
    if not isinstance(state, dict):
        raise StateShapeError(f"step {t}: the particle state must be a dict of tensors, got {type(state).__name__}")
    shapes = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] != n:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise StateShapeError(
                f"step {t}: state[{k!r}] has shape {shape}; every state entry must be a tensor with the "
                f"{n} particles on dim 0"
            )
        shapes[k] = tuple(v.shape[1:])
    if growing and prev_shapes is not None:
        prev_shapes = {k: v for k, v in prev_shapes.items() if k in shapes}
        shapes_cmp = {k: v for k, v in shapes.items() if k in prev_shapes}
        if shapes_cmp != prev_shapes:
            changed = sorted(k for k in prev_shapes if shapes_cmp.get(k) != prev_shapes[k])
            raise StateShapeError(f"step {t}: state entries {changed} changed their per-particle shapes")
        return shapes
    if prev_shapes is not None and shapes != prev_shapes:
        changed = sorted(k for k in set(shapes) | set(prev_shapes) if shapes.get(k) != prev_shapes.get(k))
        detail = ", ".join(f"{k}: {prev_shapes.get(k, 'absent')} -> {shapes.get(k, 'absent')}" for k in changed)
        raise StateShapeError(
            f"step {t}: the particle state changed its per-particle shapes ({detail}); a state must keep "
            "the same keys and shapes at every step"
        )
    return shapes


def _unpack(out: Any, n: int, t: int, ref: torch.Tensor) -> Tuple[State, torch.Tensor, Dict[str, torch.Tensor]]:
    if not isinstance(out, tuple) or len(out) not in (2, 3):
        raise TypeError(f"step {t}: a Feynman–Kac step must return (state, log_g) or (state, log_g, record)")
    state, log_g = out[0], out[1]
    record = out[2] if len(out) == 3 else state
    if not isinstance(log_g, torch.Tensor):
        log_g = torch.full((n,), float(log_g), dtype=ref.dtype, device=ref.device)
    if log_g.dim() == 0:
        log_g = log_g.expand(n)
    if log_g.shape != (n,):
        raise ValueError(f"step {t}: log potential must have shape ({n},), got {tuple(log_g.shape)}")
    return state, log_g, record


def _fail(fk: FeynmanKac, t: int, lw: torch.Tensor, log_g: torch.Tensor) -> None:
    """Raise the error that explains why the weights at step t are unusable."""
    hint = fk.explain(t)
    where = f" ({hint})" if hint else ""
    nan = torch.isnan(log_g)
    if bool(nan.any()):
        raise NonFiniteWeightError(f"step {t}: the log potential is NaN for {int(nan.sum())} particle(s){where}")
    pinf = torch.isposinf(log_g)
    if bool(pinf.any()):
        raise NonFiniteWeightError(f"step {t}: the log potential is +inf for {int(pinf.sum())} particle(s){where}")
    dead = torch.isneginf(lw).all(-1)
    if bool(dead.any()):
        raise ZeroWeightError(
            f"step {t}: all {lw.shape[-1]} particles have zero weight (log weight -inf) in "
            f"{int(dead.sum())} system(s){where}; the observation is impossible under every particle. "
            "Rerun with more particles (e.g. retries=k doubles them k times), a guided proposal, or "
            "check the observation's support"
        )
    raise NonFiniteWeightError(f"step {t}: non-finite log weights{where}")


def _lineage_mass_squares(weights: torch.Tensor, ancestor: torch.Tensor, S: int, N: int) -> torch.Tensor:
    """sum_j M_j^2 per system, M_j the total of the normalised ``weights`` (S*N,) of particles whose ``ancestor`` is j."""
    mass = torch.zeros(S * N, dtype=torch.float64, device=weights.device).scatter_add_(0, ancestor, weights)
    return mass.reshape(S, N).pow(2).sum(-1)


def eve_se(weights: torch.Tensor, eve: torch.Tensor, deviations: torch.Tensor) -> torch.Tensor:
    """Standard error of a weighted particle average from the Eve indices (Chan & Lai 2013), per column.

    ``weights`` (N,) normalised, ``eve`` (N,) time-0 ancestors, ``deviations`` (N, K) the values
    minus their weighted mean: sqrt(sum_j (sum_{i: eve_i = j} W_i dev_i)^2). For an sd, pass
    squared deviations minus the variance and divide the result by 2 sd (delta method).
    """
    per_eve = torch.zeros(deviations.shape, dtype=deviations.dtype, device=deviations.device)
    return per_eve.index_add_(0, eve, weights[:, None] * deviations).pow(2).sum(0).sqrt()


def lee_whiteley_se(log_weights: torch.Tensor, eve: torch.Tensor, num_resampled: torch.Tensor) -> torch.Tensor:
    """Standard error of log Z from the Eve indices (Lee & Whiteley 2018; Chan & Lai 2013).

    ``log_weights`` (S, N) final weights, ``eve`` (S*N,) global time-0 ancestors, ``num_resampled``
    (S,) resampling events. With S_j the weight of Eve j's descendants and
    c = (N/(N-1))^(resamplings+1), Z^2 (1 - V), V = 1 - c (1 - sum_j S_j^2), is the unbiased estimate
    of Z^2 and Z^2 V of Var(Z). The relative variance is therefore V / (1 - V) (variance over the
    unbiased Z^2, not over the squared estimate), and se = sqrt(log(1 + V/(1-V))) = sqrt(-log(1 - V)).
    Infinite when every particle descends from one Eve (V = 1): the genealogy then says nothing.
    """
    S, N = log_weights.shape
    if N < 2:
        return torch.full((S,), math.inf, dtype=torch.float64, device=log_weights.device)
    W = torch.softmax(log_weights.detach().double(), -1).reshape(-1)
    c = torch.exp((num_resampled.double() + 1) * math.log(N / (N - 1)))
    v = 1.0 - c * (1.0 - _lineage_mass_squares(W, eve, S, N))
    return (-torch.log1p(-v.clamp(0.0, 1.0))).sqrt()


def fixed_lag_se(out: "SMCOutput", lag: Optional[int] = None) -> torch.Tensor:
    """Standard error of log Z from the genealogy at a fixed lag (Olsson & Douc 2019), shape (S,).

    The Eve estimator reads every particle's time-0 ancestor, and says nothing once they all share
    one. Here each resampling stage's contribution to the asymptotic variance of log Z is read
    from the ancestors only ``lag`` steps back instead: with A(t, u) = N sum_i M_i^2 (M_i: weight
    at time u of the descendants of particle i of the population after resampling at t), the
    stage that a resampling before step t+1 closes adds A(t, t+lag) - A(t+1, t+lag) - 1, and the
    last ``lag`` steps add the Chan–Lai term over them. Their sum over N is the relative variance
    r, and se = sqrt(log(1 + r)) (log-normal Z). The lag truncates the dependence between stages
    (the model must forget its past within ``lag`` steps), so it reads low, markedly so when the
    variance is large (N far too small). Needs the history of a ``keep_history=True`` run; cost
    about ``lag`` gathers of the particle indices per resampling event. ``lag`` defaults to
    ``ceil(2 log N)`` steps.
    """
    if not out.log_weight_history:
        raise ValueError("fixed_lag_se needs the particle history: run with keep_history=True")
    S, N, T = out.num_systems, out.num_particles, len(out.log_weight_history)
    lag = max(1, math.ceil(2 * math.log(max(N, 2)))) if lag is None else int(lag)
    if lag < 1:
        raise ValueError(f"lag must be a positive number of steps, got {lag}")
    dev = out.log_weights.device
    resampled = out.resampled.T.to(dev)  # (S, T): resampled before step t

    def mass_squares(t: int, u: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(A(t, u), A(t+1, u)): one walk back through the ancestry from u."""
        w = torch.softmax(out.log_weight_history[u].detach().double(), -1).reshape(-1)
        idx, found = torch.arange(S * N, device=dev), {}
        for r in range(u, t - 1, -1):
            if r <= t + 1:
                found[r] = N * _lineage_mass_squares(w, idx, S, N)
            if r > t and out.ancestors[r] is not None:
                idx = out.ancestors[r].index_select(0, idx)
        return found[t], found.get(t + 1, found[t])

    last = max(0, T - 1 - lag)
    total = mass_squares(last, T - 1)[0] - resampled[:, last + 1:].sum(-1) - 1.0
    for t in range(last):
        closes = resampled[:, t + 1]
        if bool(closes.any()):
            here, after = mass_squares(t, t + lag)
            stage = here - after - 1.0
            total = total + torch.where(closes, stage, torch.zeros_like(stage))
    return torch.log1p(total.clamp(min=0.0) / N).sqrt()


def _lse_ess(lw: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """logsumexp over particles and the ESS of the weights in one exp pass, both shape (S,).

    Two O(N) passes (exp, then the sums as one fused dot product); no host synchronisation.
    """
    m = lw.detach().amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = lw - m
    w = w.exp_() if not w.requires_grad else w.exp()
    s1 = w.sum(-1)
    wd = w.detach()
    ess = s1.detach() ** 2 / torch.linalg.vecdot(wd, wd)
    return m.squeeze(-1) + torch.log(s1), ess


def _resample_systems(lw: torch.Tensor, need: torch.Tensor, scheme: str, base: torch.Tensor,
                      all_need: bool) -> torch.Tensor:
    """Global ancestor indices (S*N,): resampled rows where ``need``, identity elsewhere."""
    S, N = lw.shape
    local = resample(lw.detach(), scheme, validate=False)
    if not all_need:
        local = torch.where(need[:, None], local, torch.arange(N, device=lw.device).expand(S, N))
    if S == 1:
        return local.reshape(-1)
    return (local + base).reshape(-1)


def run_smc(
    fk: FeynmanKac,
    particles: int,
    *,
    systems: int = 1,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    keep_history: bool = True,
    differentiable: bool = False,
    seed: Seed = None,
    device: Optional[Any] = None,
    callback: Optional[Callable[[int, State, torch.Tensor], None]] = None,
) -> SMCOutput:
    """Run SMC on ``fk`` with ``particles`` per system and ``systems`` independent systems.

    Resampling (scheme ``resampling``) happens before step t when ESS < ``ess_threshold * N``
    (``ess_threshold >= 1``: every step; ``0``: never). With ``differentiable=True`` nothing is
    detached and autograd flows through states and weights (resampling indices are constants).
    ``callback(t, state, log_weights)`` (normalised (S, N) log weights) runs after every step.
    """
    N, S = int(particles), int(systems)
    if N < 1 or S < 1:
        raise ValueError(f"particles and systems must be positive integers, got {particles!r}, {systems!r}")
    if not 0.0 <= float(ess_threshold):
        raise ValueError(f"ess_threshold must be >= 0, got {ess_threshold!r}")
    T = int(fk.num_steps)
    if T < 1:
        raise ValueError(f"the Feynman–Kac model has {T} steps; it needs at least 1")
    dev = torch.device(device) if device is not None else None
    grad_ctx = torch.enable_grad() if differentiable else torch.no_grad()
    with seeded(seed, dev), grad_ctx:
        return _drive(fk, N, S, T, resampling, float(ess_threshold), keep_history, callback)


def _drive(fk, N, S, T, scheme, threshold, keep_history, callback) -> SMCOutput:
    n = N * S
    state, log_g, record = _unpack(fk.init(n), n, 0, torch.zeros(()))
    dev = log_g.device
    shapes = _check_state(state, n, 0, None)
    base = (torch.arange(S, device=dev) * N)[:, None]
    lw0 = torch.full((S, N), -math.log(N), dtype=log_g.dtype, device=dev)
    lw = lw0 + log_g.reshape(S, N)
    log_z, ess = _lse_ess(lw)
    inc = log_z
    eve = torch.arange(n, device=dev)
    num_res = torch.zeros(S, dtype=torch.int64, device=dev)
    out = SMCOutput(state=state, log_weights=lw, log_evidence=log_z, log_evidence_se=log_z,
                    log_evidence_history=log_z, ess=log_z, resampled=log_z, eve=eve,
                    num_particles=N, num_systems=S)
    lzs, esss, flags = [log_z], [], [torch.zeros(S, dtype=torch.bool, device=dev)]
    lwn = lw - log_z[:, None]
    esss.append(ess)

    def remember(anc, record, state, lwn) -> None:
        """Keep one step's ancestry, record, state and normalised log weights (if asked to)."""
        if keep_history:
            out.ancestors.append(anc)
            out.records.append(record)
            out.states.append(state)
            out.log_weight_history.append(lwn.detach())

    remember(None, record, state, lwn)
    for t in range(1, T):
        # one host synchronisation per step: the previous increment's finiteness and whether (and
        # where) to resample are read together
        ok = torch.isfinite(inc).all()
        if 0.0 < threshold < 1.0:
            need = ess < threshold * N
            vals = torch.stack([ok, need.any(), need.all()]).tolist()
            finite, any_need, all_need = vals
        else:
            finite = bool(ok)
            any_need = all_need = threshold >= 1.0
            need = None
        if not finite:
            _fail(fk, t - 1, lw, log_g)
        anc = None
        if any_need:
            if need is None:
                need = torch.ones(S, dtype=torch.bool, device=dev)
            anc = _resample_systems(lwn, need, scheme, base, all_need)
            state = {k: v.index_select(0, anc) for k, v in state.items()}
            eve = eve.index_select(0, anc)
            num_res = num_res + need.long()
            lwn = lw0 if all_need else torch.where(need[:, None], lw0, lwn)
        flags.append(need if need is not None else torch.full((S,), any_need, dtype=torch.bool, device=dev))
        state, log_g, record = _unpack(fk.step(t, state), n, t, lwn)
        shapes = _check_state(state, n, t, shapes, growing=not getattr(fk, "fixed_state_shapes", True))
        lw = lwn + log_g.reshape(S, N)
        inc, ess = _lse_ess(lw)
        log_z = log_z + inc
        lwn = lw - inc[:, None]
        lzs.append(log_z)
        esss.append(ess)
        remember(anc, record, state, lwn)
        if callback is not None:
            callback(t, state, lwn)
    if not bool(torch.isfinite(inc).all()):
        _fail(fk, T - 1, lw, log_g)
    out.state = state
    out.log_weights = lw
    out.log_evidence = log_z
    out.eve = eve
    out.log_evidence_se = lee_whiteley_se(lw, eve, num_res)
    out.log_evidence_history = torch.stack(lzs)
    out.ess = torch.stack(esss)
    out.resampled = torch.stack(flags)
    out.se_fixed_lag = ~torch.isfinite(out.log_evidence_se)
    if keep_history and bool(out.se_fixed_lag.any()):  # every particle shares one Eve: read a shorter genealogy
        out.log_evidence_se = torch.where(out.se_fixed_lag, fixed_lag_se(out), out.log_evidence_se)
    else:
        out.se_fixed_lag = torch.zeros_like(out.se_fixed_lag)
    return out


def ffbs(fk: FeynmanKac, out: SMCOutput, num_draws: int, seed: Seed = None, system: int = 0) -> Dict[str, torch.Tensor]:
    """Forward filtering, backward sampling: ``num_draws`` smoothing trajectories, name -> (M, T, *shape).

    Needs ``fk.log_transition`` and a run with ``keep_history=True``. Cost O(M N T) (one
    (M, N) weight matrix per step, no Python loop over particles).
    """
    if not out.records:
        raise ValueError("FFBS needs the filter history: run with keep_history=True")
    N, M, T = out.num_particles, int(num_draws), len(out.records)
    lo = system * N
    sl = slice(lo, lo + N)
    with seeded(seed, out.log_weights.device), torch.no_grad():
        W_T = out.log_weights[system]
        b = torch.multinomial(torch.softmax(W_T.double(), -1), M, replacement=True)
        draws: List[Dict[str, torch.Tensor]] = [dict() for _ in range(T)]
        draws[T - 1] = {k: v[sl].index_select(0, b) for k, v in out.records[T - 1].items()}
        for t in range(T - 2, -1, -1):
            prev = {k: v[sl].repeat(M, *([1] * (v.dim() - 1))) for k, v in out.states[t].items()}
            nxt = {k: v.repeat_interleave(N, 0) for k, v in draws[t + 1].items()}
            log_m = fk.log_transition(t + 1, prev, nxt).reshape(M, N)
            logits = out.log_weight_history[t][system][None, :] + log_m
            b = torch.multinomial(torch.softmax(logits.double(), -1), 1).squeeze(-1)
            draws[t] = {k: v[sl].index_select(0, b) for k, v in out.records[t].items()}
    keys = list(dict.fromkeys(k for d in draws for k in d))
    return {k: torch.stack([d[k] for d in draws if k in d], 1) for k in keys}
