"""SMC samplers for static models: tempering from a reference to the posterior, with MCMC moves.

The path is pi_beta(z) ∝ exp(base(z) + beta * incr(z)) over flat unconstrained points, beta from
0 to 1: likelihood tempering (base = prior, incr = likelihood), a geometric path from a reference
program to the model, or a product of programs' densities over shared sites. Next temperatures
come from a fixed schedule (validated) or by bisection to a target ESS / conditional ESS. Log Z
of the full model is the sum of the log mean incremental weights (unbiased in evidence scale).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ppl.inference.program import Program
from ppl.inference.registry import register_engine
from ppl.inference.resampling import ZeroWeightError, resample
from ppl.inference.result import Result
from ppl.inference.runtime import Seed, seeded
from ppl.inference.smc.feynman_kac import NonFiniteWeightError, lee_whiteley_se
from ppl.inference.smc.moves import make_move
from ppl.inference.target import UnconstrainedTarget


class ScheduleError(ValueError):
    """A tempering schedule that does not increase strictly from >= 0 to exactly 1."""


# ------------------------------------------------------------------------------------------ paths
class LikelihoodPath:
    """prior x likelihood^beta of one program (starts from the prior, which is sampled exactly)."""

    def __init__(self, target: UnconstrainedTarget) -> None:
        self.target = target
        self.dim = target.dim

    def sample_init(self, n: int) -> torch.Tensor:
        return self.target.sample_prior(n)

    def init_log_weights(self, z: torch.Tensor) -> Optional[torch.Tensor]:
        """Log weights of the initial draws towards the beta=0 target (None: they are exact draws)."""
        return self.target.prior_excess(z)

    def terms(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            d = self.target.log_density(z)
        return d.prior + d.jacobian, d.likelihood

    def terms_grad(self, z: torch.Tensor, beta: float):
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            d = self.target.log_density(z)
            base, incr = d.prior + d.jacobian, d.likelihood
            (g,) = torch.autograd.grad((base + beta * incr).sum(), z)
        return base.detach(), incr.detach(), g

    def constrain(self, z: torch.Tensor) -> Dict[str, Any]:
        return self.target.constrain(z, observed=True)

    def explain(self, z: torch.Tensor) -> str:
        return self.target.explain_nonfinite(z)


def _check_layout(a: UnconstrainedTarget, b: UnconstrainedTarget, what: str) -> None:
    la = [(blk.name, tuple(blk.shape)) for blk in a.blocks]
    lb = [(blk.name, tuple(blk.shape)) for blk in b.blocks]
    if la != lb:
        raise ValueError(f"{what}: the programs must have the same latent sites in the same order and "
                         f"shapes, got {la} and {lb}")


class ProductPath(LikelihoodPath):
    """Product of programs' densities over shared latent sites (product of experts).

    The first program's prior is the reference; the path tempers in its likelihood and the
    other programs' full densities (their priors and likelihoods). The Jacobian counts once.
    """

    def __init__(self, targets: Sequence[UnconstrainedTarget]) -> None:
        if len(targets) < 1:
            raise ValueError("a product needs at least one program")
        for other in targets[1:]:
            _check_layout(targets[0], other, "product of programs")
        super().__init__(targets[0])
        self.others = list(targets[1:])

    def _terms(self, z):
        d = self.target.log_density(z)
        incr = d.likelihood
        for t in self.others:
            e = t.log_density(z)
            incr = incr + e.prior + e.likelihood
        return d.prior + d.jacobian, incr

    def terms(self, z):
        with torch.no_grad():
            return self._terms(z)

    def terms_grad(self, z, beta):
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            base, incr = self._terms(z)
            (g,) = torch.autograd.grad((base + beta * incr).sum(), z)
        return base.detach(), incr.detach(), g

    def explain(self, z):
        return "; ".join(t.explain_nonfinite(z) for t in [self.target] + self.others)


class GeometricPath(LikelihoodPath):
    """ref^(1-beta) x model^beta over shared latent sites, from a reference program with no observations."""

    def __init__(self, reference: UnconstrainedTarget, model: UnconstrainedTarget) -> None:
        _check_layout(reference, model, "geometric path")
        if reference.program.observed_sites():
            raise ValueError("the reference program of a geometric path must have no observed sites "
                             f"(it must be sampled exactly); it observes {list(reference.program.observed_sites())}")
        super().__init__(model)
        self.reference = reference

    def sample_init(self, n):
        return self.reference.sample_prior(n)

    def init_log_weights(self, z: torch.Tensor) -> Optional[torch.Tensor]:
        return self.reference.prior_excess(z)

    def _terms(self, z):
        r = self.reference.log_density(z)
        m = self.target.log_density(z)
        base = r.prior + r.jacobian
        return base, m.prior + m.jacobian + m.likelihood - base

    terms = ProductPath.terms
    terms_grad = ProductPath.terms_grad

    def explain(self, z):
        return self.reference.explain_nonfinite(z) + "; " + self.target.explain_nonfinite(z)


# ------------------------------------------------------------------------------------------ schedule
def validate_schedule(schedule: Sequence[float]) -> List[float]:
    """A fixed schedule as a list: strictly increasing, in [0, 1], ending at 1 (a leading 0 is dropped)."""
    betas = [float(b) for b in (schedule.tolist() if isinstance(schedule, torch.Tensor) else schedule)]
    if not betas:
        raise ScheduleError("the tempering schedule is empty; it must increase to 1")
    if any(not math.isfinite(b) for b in betas):
        raise ScheduleError(f"the tempering schedule has non-finite entries: {betas}")
    if betas[0] < 0 or betas[-1] != 1.0:
        raise ScheduleError(f"the tempering schedule must lie in [0, 1] and end at exactly 1, got first={betas[0]}, last={betas[-1]}")
    bad = [i for i in range(1, len(betas)) if betas[i] <= betas[i - 1]]
    if bad:
        i = bad[0]
        raise ScheduleError(f"the tempering schedule must increase strictly: entry {i} is {betas[i]} after {betas[i - 1]}")
    return betas[1:] if betas[0] == 0.0 else betas


def _ess_frac(lwn: torch.Tensor, incr: torch.Tensor, delta: float, conditional: bool) -> float:
    """ESS / N (or conditional ESS / N) of the weights after moving beta by ``delta``."""
    lv = delta * incr
    lv = torch.where(torch.isnan(lv), torch.full_like(lv, -math.inf), lv)
    n = incr.shape[0]
    if conditional:
        a = torch.logsumexp(lwn + lv, 0)
        b = torch.logsumexp(lwn + 2 * lv, 0)
        return float(torch.exp(2 * a - b)) if torch.isfinite(b) else 0.0
    lw = lwn + lv
    a = torch.logsumexp(lw, 0)
    b = torch.logsumexp(2 * lw, 0)
    return float(torch.exp(2 * a - b)) / n if torch.isfinite(b) else 0.0


def next_temperature(lwn: torch.Tensor, incr: torch.Tensor, beta: float, target: float,
                     conditional: bool = False, tol: float = 1e-6) -> float:
    """The largest beta' <= 1 with ESS (or CESS) fraction >= ``target``, by bisection on beta' - beta."""
    hi = 1.0 - beta
    if _ess_frac(lwn, incr, hi, conditional) >= target:
        return 1.0
    lo = 0.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if _ess_frac(lwn, incr, mid, conditional) >= target:
            lo = mid
        else:
            hi = mid
    return beta + max(lo, tol)


# ------------------------------------------------------------------------------------------ driver
def run_tempering(
    path: LikelihoodPath,
    particles: int,
    *,
    schedule: Optional[Sequence[float]] = None,
    target_ess: float = 0.5,
    conditional: bool = False,
    move: Any = "rwmh",
    move_steps: int = 5,
    resampling: str = "systematic",
    ess_threshold: float = 1.0,
    max_steps: int = 1000,
    seed: Seed = None,
) -> Dict[str, Any]:
    """Run an SMC sampler along ``path``; returns particles, log weights, log Z (+ se) and histories.

    Each step: choose beta' (schedule or bisection), reweight by (beta' - beta) * incr, resample
    if ESS < ``ess_threshold * N`` (default: always), then move with the MCMC move at beta'.
    """
    N = int(particles)
    if N < 2:
        raise ValueError(f"particles must be at least 2, got {particles!r}")
    if not 0.0 < target_ess < 1.0:
        raise ValueError(f"target_ess must be in (0, 1), got {target_ess!r}")
    betas_fixed = validate_schedule(schedule) if schedule is not None else None
    mover = make_move(move, move_steps)
    with seeded(seed, getattr(path.target, "device", None)):
        z = path.sample_init(N)
        base, incr = path.terms(z)
        dev = z.device
        lwn = torch.full((N,), -math.log(N), dtype=base.dtype, device=dev)
        log_z = torch.zeros((), dtype=torch.float64, device=dev)
        init = getattr(path, "init_log_weights", lambda _: None)(z)
        if init is not None:  # prior draws reweighted to a scaled / masked prior (poutine.scale on latents)
            lw = lwn + init
            inc = torch.logsumexp(lw, 0)
            log_z, lwn = log_z + inc.double(), lw - inc
        eve = torch.arange(N, device=dev)
        n_res, se = 0, math.inf
        beta = 0.0
        hist: Dict[str, List[float]] = {"temperature": [], "ess": [], "resampled": [], "acceptance": [],
                                        "move_steps": [], "log_evidence": []}
        k = 0
        while beta < 1.0:
            if k >= max_steps:
                raise RuntimeError(f"tempering did not reach beta=1 in {max_steps} steps (beta={beta:.3g}); "
                                   "raise max_steps or lower target_ess")
            if torch.isnan(incr).any() or torch.isnan(base).any() or torch.isposinf(incr).any():
                raise NonFiniteWeightError(f"tempering step {k}: {path.explain(z)}")
            new_beta = betas_fixed[k] if betas_fixed is not None else next_temperature(lwn, incr, beta, target_ess, conditional)
            delta = new_beta - beta
            lw = lwn + torch.where(torch.isneginf(incr), torch.full_like(incr, -math.inf), delta * incr)
            inc = torch.logsumexp(lw, 0)
            if not bool(torch.isfinite(inc)):
                raise ZeroWeightError(f"tempering step {k} (beta {beta:.4g} -> {new_beta:.4g}): all {N} particles have "
                                      f"zero weight; {path.explain(z)}. Use more particles or a finer schedule")
            log_z = log_z + inc.double()
            lwn = lw - inc
            ess = float(torch.exp(-torch.logsumexp(2 * lwn, 0)))
            beta = new_beta
            if beta >= 1.0:  # only the final weights' se is reported: no O(N) scatter every step
                se = float(lee_whiteley_se(lwn[None], eve, torch.tensor([n_res], device=dev))[0])
            resampled = ess < ess_threshold * N or ess_threshold >= 1.0
            if resampled:
                anc = resample(lwn, resampling)
                z, base, incr, eve = z[anc], base[anc], incr[anc], eve[anc]
                lwn = torch.full_like(lwn, -math.log(N))
                n_res += 1
            z, base, incr, info = mover(z, base, incr, beta, path.terms, path.terms_grad)
            for key, val in (("temperature", beta), ("ess", ess), ("resampled", float(resampled)),
                             ("acceptance", info.acceptance), ("move_steps", _steps(info)), ("log_evidence", float(log_z))):
                hist[key].append(val)
            k += 1
    return {"z": z, "log_weights": lwn, "log_evidence": float(log_z), "log_evidence_se": se, "history": hist,
            "eve": eve}


def _steps(info) -> float:
    """The kernel steps a move took (NaN for moves that do not report them)."""
    steps = getattr(info, "steps", None)
    return math.nan if steps is None else float(steps)


def _result(path: LikelihoodPath, run: Dict[str, Any], engine: str, attrs: Dict[str, Any]) -> Result:
    named = path.constrain(run["z"])
    loglik = named.pop("__log_likelihood__", {})
    program = path.target.program
    hist = run["history"]
    return Result(
        engine=engine,
        samples={k: v.detach().unsqueeze(0) for k, v in named.items()},
        log_weights=run["log_weights"].detach().unsqueeze(0),
        log_evidence=run["log_evidence"],
        log_evidence_se=run["log_evidence_se"],
        log_likelihood={k: v.unsqueeze(0) for k, v in loglik.items()},
        observed_data=program.observed_data(),
        dims={k: s.dims for k, s in program.sites.items()},
        diagnostics={k: torch.tensor(v, dtype=torch.float64) for k, v in hist.items()},
        sample_stats={"eve": run["eve"].detach().unsqueeze(0)} if "eve" in run else {},
        attrs=dict(attrs, num_steps=len(next(iter(hist.values()))), num_resampling=int(sum(hist["resampled"])),
                   log_evidence_se_method="lee-whiteley"),
    )


@register_engine("tempered-smc", "SMC sampler: adaptive likelihood tempering with MCMC moves (log evidence)")
def tempered_smc(
    model: Callable[..., Any],
    *args: Any,
    particles: int = 1000,
    schedule: Optional[Sequence[float]] = None,
    target_ess: float = 0.5,
    conditional: bool = False,
    move: Any = "rwmh",
    move_steps: int = 5,
    resampling: str = "systematic",
    reference: Optional[Callable[..., Any]] = None,
    experts: Sequence[Callable[..., Any]] = (),
    seed: Seed = None,
    device: Optional[Any] = None,
    dtype: Optional[torch.dtype] = None,
    max_plate_nesting: Optional[int] = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
) -> Result:
    """Tempered SMC on a static model: weighted posterior particles and log Z with its standard error.

    ``reference``: a program with the same latent sites and no observations (run with the
    model's arguments) for a geometric path ref^(1-beta) model^beta; ``experts``: further
    programs whose densities multiply the model's over the shared sites (product of experts).
    ``move``: "rwmh", "mala", "hmc", a move object or a ``ppl.inference.mcmc`` kernel class.
    """
    start = time.perf_counter()
    if reference is not None and experts:
        raise ValueError("give either reference= (geometric path) or experts= (product), not both")
    fns = [model] + ([reference] if reference is not None else list(experts))
    programs = [Program(f, args, model_kwargs, max_plate_nesting=max_plate_nesting, device=device, dtype=dtype) for f in fns]
    if len(programs) > 1:  # one plate depth for all, so shared sites get the same batched layout
        nest = max(p.max_plate_nesting for p in programs)
        programs = [Program(f, args, model_kwargs, max_plate_nesting=nest, device=device, dtype=dtype) for f in fns]
    program = programs[0]
    for p in programs:
        p.require_full_data("tempered-smc")
    target = UnconstrainedTarget(program)
    if reference is not None:
        path: LikelihoodPath = GeometricPath(UnconstrainedTarget(programs[1]), target)
    elif experts:
        path = ProductPath([target] + [UnconstrainedTarget(p) for p in programs[1:]])
    else:
        path = LikelihoodPath(target)
    run = run_tempering(path, particles, schedule=schedule, target_ess=target_ess, conditional=conditional,
                        move=move, move_steps=move_steps, resampling=resampling, seed=seed)
    return _result(path, run, "tempered-smc", {"particles": int(particles), "move": str(move),
                                                "runtime_s": time.perf_counter() - start, **program.attrs()})


# ------------------------------------------------------------------------------------------ data tempering
class _PointwiseTarget:
    """prior + Jacobian and the flat pointwise log-likelihood (N, M) of a program at unconstrained points."""

    def __init__(self, target: UnconstrainedTarget) -> None:
        from ppl.handlers import UnconstrainMessenger

        self.target, self._um = target, UnconstrainMessenger
        self.program = target.program

    def __call__(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        trace, density = self.program.run(z.shape[0], self._um(self.target.unflatten(z)))
        zero = z.new_zeros(z.shape[0])
        base = zero + density.get("prior") + density.get("jacobian")
        ll = self.program.pointwise_log_likelihood(trace)
        if not ll:
            raise ValueError("data tempering needs observed sites")
        return base, torch.cat([v.reshape(z.shape[0], -1) for v in ll.values()], 1)


def ibis(
    model: Callable[..., Any],
    *args: Any,
    particles: int = 1000,
    num_batches: int = 10,
    move: Any = "rwmh",
    move_steps: int = 5,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    seed: Seed = None,
    device: Optional[Any] = None,
    dtype: Optional[torch.dtype] = None,
    max_plate_nesting: Optional[int] = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
) -> Result:
    """Data tempering (IBIS): add the observations in ``num_batches`` batches, moving the particles between.

    Observations are the pointwise log-likelihood terms of all observed sites, in order. Each
    stage reweights by the new batch's likelihood, resamples when ESS < ``ess_threshold * N`` and
    then moves with an MCMC move targeting the posterior given the data seen so far.
    """
    start = time.perf_counter()
    program = Program(model, args, model_kwargs, max_plate_nesting=max_plate_nesting, device=device, dtype=dtype)
    program.require_full_data("ibis")
    target = UnconstrainedTarget(program)
    pw = _PointwiseTarget(target)
    mover = make_move(move, move_steps)
    N = int(particles)
    with seeded(seed, program.device):
        z = target.sample_prior(N)
        with torch.no_grad():
            base, ll = pw(z)
        M = ll.shape[1]
        edges = [round(i * M / num_batches) for i in range(int(num_batches) + 1)]
        edges = sorted(set(edges))
        lwn = torch.full((N,), -math.log(N), dtype=base.dtype, device=z.device)
        log_z = torch.zeros((), dtype=torch.float64)
        eve, n_res, se = torch.arange(N, device=z.device), 0, 0.0
        hist: Dict[str, List[float]] = {"observations": [], "ess": [], "resampled": [], "acceptance": [],
                                        "move_steps": [], "log_evidence": []}
        for k in range(1, len(edges)):
            lo, hi = edges[k - 1], edges[k]
            inc_w = ll[:, lo:hi].sum(1)
            if torch.isnan(inc_w).any():
                raise NonFiniteWeightError(f"data tempering stage {k}: {target.explain_nonfinite(z)}")
            lw = lwn + inc_w
            inc = torch.logsumexp(lw, 0)
            if not bool(torch.isfinite(inc)):
                raise ZeroWeightError(f"data tempering stage {k} (observations {lo}..{hi - 1}): all {N} particles "
                                      "have zero weight; use more particles or smaller batches")
            log_z = log_z + inc.double().cpu()
            lwn = lw - inc
            ess = float(torch.exp(-torch.logsumexp(2 * lwn, 0)))
            if k == len(edges) - 1:  # the final weights' se only
                se = float(lee_whiteley_se(lwn[None], eve, torch.tensor([n_res], device=z.device))[0])
            resampled = ess < ess_threshold * N
            if resampled:
                anc = resample(lwn, resampling)
                z, eve = z[anc], eve[anc]
                lwn = torch.full_like(lwn, -math.log(N))
                n_res += 1

            def terms(x, hi=hi):
                with torch.no_grad():
                    b, l_ = pw(x)
                return b + l_[:, :hi].sum(1), torch.zeros_like(b)

            def terms_grad(x, beta, hi=hi):
                x = x.detach().requires_grad_(True)
                with torch.enable_grad():
                    b, l_ = pw(x)
                    tot = b + l_[:, :hi].sum(1)
                    (g,) = torch.autograd.grad(tot.sum(), x)
                return tot.detach(), torch.zeros_like(tot).detach(), g

            b0, i0 = terms(z)
            z, _, _, info = mover(z, b0, i0, 1.0, terms, terms_grad)
            with torch.no_grad():
                base, ll = pw(z)
            for key, val in (("observations", hi), ("ess", ess), ("resampled", float(resampled)),
                             ("acceptance", info.acceptance), ("move_steps", _steps(info)), ("log_evidence", float(log_z))):
                hist[key].append(val)
    run = {"z": z, "log_weights": lwn, "log_evidence": float(log_z), "log_evidence_se": se, "history": hist}
    res = _result(LikelihoodPath(target), run, "ibis", {"particles": N, "move": str(move), **program.attrs(),
                                                        "runtime_s": time.perf_counter() - start})
    res.attrs["num_steps"] = len(hist["observations"])
    return res
