"""The MCMC driver: build the target from a program, initialise chains, warm up (Stan's schedule), sample.

One function, :func:`mcmc`, runs any kernel of this package on a Pyro program with all chains
as one batch; the named engines (``nuts``, ``hmc``, ``mala``, ``rwmh``, ``chees``) are thin
wrappers registered for the CLI.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import torch
from tqdm.auto import tqdm

from ppl.handlers.unconstrain import DiscreteLatentError
from ppl.inference.mcmc.chees import ChEES
from ppl.inference.mcmc.elliptical import EllipticalSlice
from ppl.inference.mcmc.gibbs import DiscreteGibbs, discrete_sites
from ppl.inference.mcmc.hmc import HMC, MALA
from ppl.inference.mcmc.nuts import NUTS
from ppl.inference.mcmc.potential import Potential
from ppl.inference.mcmc.rwmh import RWMH
from ppl.inference.mcmc.state import (ChainState, DualAveraging, StepInfo, Welford, find_reasonable_step_size,
                                      stan_windows)
from ppl.inference.program import Program
from ppl.inference.registry import register_engine
from ppl.inference.result import Result
from ppl.inference.runtime import Seed, seeded
from ppl.inference.target import UnconstrainedTarget

KERNELS: Dict[str, Callable[..., Any]] = {
    "nuts": NUTS, "hmc": HMC, "mala": MALA, "rwmh": RWMH, "chees": ChEES, "elliptical_slice": EllipticalSlice,
}

Init = Union[None, str, Mapping[str, Any], Result, torch.Tensor]


AUTO_INDUCTOR_AFTER_S = 60.0
"""With ``compile="auto"`` on CPU, sampling predicted (from the end of warmup) to take longer than this
many seconds switches the graphs to inductor: ~10-20 s of compiling buys 2-3x faster steps."""


def _have_cxx() -> bool:
    """Whether inductor's CPU backend can find a C++ compiler."""
    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c)


def _switch_to_inductor(compile: Union[bool, str], device: torch.device, predicted_s: float) -> bool:
    return compile == "auto" and device.type == "cpu" and predicted_s > AUTO_INDUCTOR_AFTER_S and _have_cxx()


class InitError(ValueError):
    """No valid initial point: the log density or its gradient is not finite (the message names the site)."""


# ------------------------------------------------------------------------------------ init
def _random_init(target: UnconstrainedTarget, how: str, n: int) -> torch.Tensor:
    if how == "prior":
        return target.sample_prior(n)
    if how == "uniform":  # Stan's default: U(-2, 2) in unconstrained space
        return torch.rand(n, target.dim, device=target.device, dtype=target.dtype) * 4 - 2
    raise ValueError(f"init must be None, 'uniform', 'prior', a dict of site values, a Result or a tensor; got {how!r}")


def _result_init(target: UnconstrainedTarget, result: Result, chains: int):
    """Points (and tuning) to continue from a previous result: its saved final state, else its last draws."""
    diag = result.diagnostics
    if "final_z" in diag:
        z = torch.as_tensor(diag["final_z"], device=target.device, dtype=target.dtype)
        tuning = {k: torch.as_tensor(diag[f"final_{k}"], device=target.device, dtype=target.dtype)
                  for k in ("step_size", "inv_mass") if f"final_{k}" in diag}
    else:
        last = {k: v[:, -1] for k, v in result.samples.items() if k in target.program.latent_sites()}
        z = target.unconstrain_values(last, last[next(iter(last))].shape[0])
        tuning = {}
    if z.shape[0] != chains:
        raise ValueError(f"init=Result has {z.shape[0]} chains but chains={chains}; pass chains={z.shape[0]}")
    return z, tuning


def initial_points(target: UnconstrainedTarget, potential: Potential, init: Init, chains: int, tries: int = 100):
    """Initial (chains, D) points with finite log density and gradient, plus any tuning carried over."""
    tuning: Dict[str, torch.Tensor] = {}
    if isinstance(init, Result):
        z, tuning = _result_init(target, init, chains)
    elif isinstance(init, torch.Tensor):
        z = init.to(device=target.device, dtype=target.dtype)
        if tuple(z.shape) != (chains, target.dim):
            raise ValueError(f"an init tensor must have shape (chains, D) = {(chains, target.dim)}, got {tuple(z.shape)}")
    elif isinstance(init, Mapping):
        z = target.unconstrain_values(init, chains)
    else:
        how = init or "uniform"
        z = _random_init(target, how, chains)
        for _ in range(tries):
            lp, grad = potential(z)
            bad = ~(torch.isfinite(lp) & torch.isfinite(grad).all(-1))
            if not bool(bad.any()):
                break
            z = torch.where(bad.unsqueeze(-1), _random_init(target, how, chains), z)
    lp, grad = potential(z)
    bad = ~(torch.isfinite(lp) & torch.isfinite(grad).all(-1))
    if bool(bad.any()):
        zb = z[bad]
        raise InitError(f"{int(bad.sum())} of {chains} chain(s) start where " + target.explain_nonfinite(zb, "log density")
                        + (" or its gradient" if bool(torch.isfinite(lp[bad]).all()) else "")
                        + "; pass init= values inside the support where the model's density is finite")
    return z, tuning


def _split_init(init: Init, names: List[str]):
    """Separate the discrete sites' starting values (named shape) from the continuous part of ``init``."""
    if isinstance(init, Result):
        return {k: torch.as_tensor(init.samples[k])[:, -1] for k in names if k in init.samples}, init
    if isinstance(init, Mapping):
        given = {k: v for k, v in init.items() if k in names}
        rest = {k: v for k, v in init.items() if k not in names}
        return given, (rest or None)
    return {}, init


# --------------------------------------------------------------------------------- warmup
class Adapter:
    """Warmup adaptation: per-chain dual averaging of the step size and Stan's windowed mass matrix."""

    def __init__(self, kernel, warmup: int, target_accept: Optional[float], adapt_step_size: bool,
                 adapt_mass: bool, dense: bool, pool: bool = True, respawn: bool = True) -> None:
        self.kernel = kernel
        self.target_accept = target_accept
        self.adapt_step_size = adapt_step_size and target_accept is not None
        self.window_ends = set(stan_windows(warmup)) if adapt_mass else set()
        self.dense = dense
        self.pool = pool
        self.respawn = respawn and pool
        self.respawned = 0
        self.da: Optional[DualAveraging] = None
        self.welford: Optional[Welford] = None
        self.window_start = 75 if warmup >= 150 else int(0.15 * warmup)
        self.accepted: Optional[torch.Tensor] = None  # per-chain acceptance summed since the last check
        self.checked = 0

    def _stuck(self, i: int) -> Optional[torch.Tensor]:
        """Chains that have accepted (almost) nothing since the last check while the others move.

        With one shared step size a chain started far from the typical set (a huge gradient there)
        diverges on every step and never leaves; Stan's per-chain adaptation would shrink its own
        step size instead. Such chains are restarted from the positions of moving ones (warmup
        draws are discarded, so this changes only where the chains start sampling).
        """
        if not self.respawn or self.accepted is None or i + 1 - self.checked < 20:
            return None
        rate = self.accepted / (i + 1 - self.checked)
        self.accepted, self.checked = None, i + 1
        stuck = rate < 0.05
        if not bool(stuck.any()) or bool(stuck.all()) or float(rate.median()) < 0.3:
            return None
        return stuck

    def _respawn(self, state: ChainState, stuck: torch.Tensor) -> ChainState:
        moving = (~stuck).nonzero().squeeze(1)
        rows = stuck.nonzero().squeeze(1)
        donors = moving[torch.randint(moving.numel(), (rows.numel(),), device=moving.device)]
        self.respawned += rows.numel()
        z, lp, grad = state.z.clone(), state.lp.clone(), state.grad.clone()
        z[rows], lp[rows], grad[rows] = state.z[donors], state.lp[donors], state.grad[donors]
        return state._replace(z=z, lp=lp, grad=grad)

    def _restart_step_size(self, state: ChainState) -> ChainState:
        eps = find_reasonable_step_size(self.kernel, state)
        if self.pool:
            eps = eps.log().mean().exp().expand_as(eps).clone()
        self.da = DualAveraging.start(eps)
        return state._replace(step_size=eps)

    def start(self, state: ChainState) -> ChainState:
        if self.adapt_step_size:
            state = self._restart_step_size(state)
        self.welford = Welford.start(state.z, self.dense)
        return state

    def update(self, i: int, state: ChainState, info: StepInfo) -> ChainState:
        if isinstance(self.kernel, ChEES):
            self.kernel.adapt(info, state.inv_mass, state.step_size)
        chain_accept = torch.nan_to_num(info.accept_prob, nan=0.0)
        if self.respawn:
            self.accepted = chain_accept if self.accepted is None else self.accepted + chain_accept
        if self.adapt_step_size:
            accept = chain_accept.mean().expand_as(chain_accept) if self.pool else chain_accept
            self.da = self.da.update(accept, self.target_accept)
            state = state._replace(step_size=self.da.step_size.clamp(1e-8, 1e3))
        if self.window_ends and i == self.window_start - 1:  # before the first mass-matrix window
            stuck = self._stuck(i)
            if stuck is not None:
                state = self._respawn(state, stuck)
        if self.window_ends and i >= self.window_start:
            self.welford = self.welford.update(state.z)
            if i in self.window_ends:
                stuck = self._stuck(i)
                keep = None if stuck is None else ~stuck
                state = state._replace(inv_mass=self.welford.inv_mass(pool=self.pool, keep=keep))
                if stuck is not None:
                    state = self._respawn(state, stuck)
                if isinstance(self.kernel, EllipticalSlice):
                    self.kernel.mean = self.welford.mean.mean(0) if self.pool else self.welford.mean
                self.welford = Welford.start(state.z, self.dense)
                if self.adapt_step_size:
                    state = self._restart_step_size(state)
        return state

    def finish(self, state: ChainState) -> ChainState:
        if self.adapt_step_size and self.da is not None and self.da.t > 0:
            state = state._replace(step_size=self.da.final_step_size.clamp(1e-8, 1e3))
        return state


# ---------------------------------------------------------------------------------- driver
def _default_target_accept(kernel, dim: int) -> Optional[float]:
    """The kernel's target acceptance; random walk: 0.44 in one dimension down to 0.234 from five (Roberts & Rosenthal)."""
    if isinstance(kernel, RWMH):
        return 0.44 if dim == 1 else (0.234 if dim >= 5 else 0.44 - (0.44 - 0.234) * (dim - 1) / 4)
    return getattr(kernel, "target_accept", None)


def _make_kernel(kernel: Union[str, Callable], potential: Potential, options: Dict[str, Any]):
    if isinstance(kernel, str):
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose one of {sorted(KERNELS)}")
        if kernel == "hmc":
            options = dict({"jitter": 0.2}, **options)
        kernel = KERNELS[kernel]
    try:
        return kernel(potential, **options)
    except TypeError as e:
        raise TypeError(f"bad option for kernel {getattr(kernel, 'name', kernel)!r}: {e}") from e


def mcmc(
    model: Callable[..., Any],
    *args: Any,
    kernel: Union[str, Callable] = "nuts",
    chains: int = 4,
    warmup: int = 500,
    draws: int = 1000,
    thin: int = 1,
    init: Init = None,
    seed: Seed = None,
    device: Optional[Any] = None,
    dtype: Optional[torch.dtype] = None,
    progress: bool = True,
    model_kwargs: Optional[Mapping[str, Any]] = None,
    max_plate_nesting: Optional[int] = None,
    step_size: Optional[float] = None,
    target_accept: Optional[float] = None,
    adapt_step_size: bool = True,
    adapt_mass: bool = True,
    dense_mass: bool = False,
    pool_adaptation: bool = True,
    compile: Union[bool, str] = "auto",
    log_likelihood: bool = True,
    **kernel_options: Any,
) -> Result:
    """Run ``chains`` batched chains of ``kernel`` on the posterior of ``model(*args, **model_kwargs)``.

    ``warmup`` iterations adapt the step size (dual averaging towards ``target_accept``) and the
    mass matrix (Stan's windows; ``dense_mass`` for a dense one). With ``pool_adaptation``
    (default) the chains share one step size (dual averaging of their mean acceptance) and one
    mass matrix (all chains' draws): C chains adapt C times faster and no chain is left with a bad
    step size; ``pool_adaptation=False`` adapts each chain alone, as Stan. Then ``draws * thin``
    iterations are run and every ``thin``-th kept. ``init``: None / "uniform" (U(-2, 2)
    unconstrained), "prior", a dict of constrained site values, a (chains, D) unconstrained
    tensor, or a previous Result (continue from its final state and tuning; pass ``warmup=0``
    to keep its tuning). ``compile``: "auto" (default: record the log density's graph once per
    run and replay it without Python, checked against the plain path, falling back to it),
    False, "fx" or "inductor" (see :class:`Potential`); use False for programs whose control
    flow depends on latent values. ``log_likelihood``: pointwise log-likelihoods of every draw
    (for ArviZ's loo / waic), chains x draws x observations values computed in chunks and kept on
    the host; turn it off for very large runs. ``kernel_options`` go to the kernel's constructor.
    Ctrl-C returns the draws so far with ``attrs["interrupted"] == 1``.

    Discrete latent sites with finite support (Bernoulli, Categorical, Binomial, ...) are
    Gibbs-sampled: each iteration runs ``kernel`` on the continuous latents with the discrete
    values held fixed, then redraws every discrete element from its full conditional by
    enumerating its support for all chains at once (:class:`DiscreteGibbs`; the recorded graph
    takes the discrete values as inputs). Their draws appear in the result like any other site;
    ``init`` may give their values.
    """
    for name, value, low in (("chains", chains, 1), ("warmup", warmup, 0), ("draws", draws, 1), ("thin", thin, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    start_time = time.perf_counter()
    program = Program(model, args, model_kwargs, max_plate_nesting=max_plate_nesting, device=device, dtype=dtype)
    program.require_full_data("MCMC")
    with seeded(seed, program.device), torch.no_grad():
        discrete = discrete_sites(program)
        gibbs: Optional[DiscreteGibbs] = None
        try:
            if discrete:
                gibbs = DiscreteGibbs(program, discrete)  # a discrete site with infinite support raises here
                given, init = _split_init(init, discrete)
                target = UnconstrainedTarget(program, fixed=gibbs.initial_values(chains, given))
                if target.dim == 0:
                    raise ValueError(f"every latent site of the model is discrete ({discrete}); MCMC here needs at "
                                     "least one continuous latent: enumerate the posterior exactly, or use "
                                     "importance sampling / SMC")
            else:
                target = UnconstrainedTarget(program)
        except DiscreteLatentError as e:
            raise DiscreteLatentError(
                f"{e}. The MCMC kernels here (nuts, hmc, mala, rwmh, chees, elliptical_slice) move continuous "
                "latents and Gibbs-sample discrete ones with finite support (scalar events) only"
            ) from None
        potential = Potential(target, compile=compile)
        k = _make_kernel(kernel, potential, kernel_options)
        z, tuning = initial_points(target, potential, init, chains)
        default_eps = 2.38 / math.sqrt(target.dim) if isinstance(k, RWMH) else (1.0 if isinstance(k, EllipticalSlice) else 0.1)
        eps = tuning.get("step_size", step_size if step_size is not None else default_eps)
        inv_mass = tuning.get("inv_mass")
        if inv_mass is not None and dense_mass != (inv_mass.dim() == 3):
            inv_mass = None
        state = k.init(z, step_size=eps, inv_mass=inv_mass, dense=dense_mass)
        adapter = Adapter(k, warmup, target_accept or _default_target_accept(k, target.dim),
                          adapt_step_size, adapt_mass, dense_mass, pool_adaptation,
                          respawn=gibbs is None)  # a Gibbs chain's discrete values would not follow its donor
        kept: List[torch.Tensor] = []
        kept_discrete: List[Dict[str, torch.Tensor]] = []
        stats: Dict[str, List[torch.Tensor]] = {k_: [] for k_ in ("lp", "acceptance_rate", "step_size", "tree_depth",
                                                                  "n_steps", "diverging", "energy")}
        evals_spent, evals_useful, warmup_divergences = 0, 0, 0
        interrupted = False
        total = warmup + draws * thin
        bar = tqdm(total=total, desc=f"{getattr(k, 'name', 'mcmc')} {chains} chain(s)", disable=not progress)
        t_warm = t_sample = time.perf_counter()
        window = min(50, warmup // 4)  # the last warmup iterations time one step at the adapted settings
        t_window, recorded = t_warm, 0.0
        compile_used = str(compile or False)
        try:
            if warmup > 0:
                state = adapter.start(state)
            for i in range(total):
                if i == warmup - window:
                    t_window, recorded = time.perf_counter(), potential.record_s
                if i == warmup:
                    state = adapter.finish(state)
                    if window > 0:
                        per_step = (time.perf_counter() - t_window - (potential.record_s - recorded)) / window
                        if _switch_to_inductor(compile, program.device, per_step * draws * thin):
                            potential.recompile("inductor")
                            compile_used = "auto->inductor"
                    t_sample = time.perf_counter()
                state, info = k.step(state)
                if gibbs is not None:  # redraw the discrete sites, then re-evaluate the continuous target there
                    gibbs.step(target, state.z, lambda pts: potential(pts)[0])
                    lp, grad = potential(state.z)
                    state = state._replace(lp=lp, grad=grad)
                if i < warmup:
                    state = adapter.update(i, state, info)
                    warmup_divergences += int(info.diverging.sum())
                else:
                    evals_spent += info.n_evals * chains
                    evals_useful += int(info.n_steps.sum())
                    if (i - warmup) % thin == thin - 1:
                        kept.append(state.z)
                        if gibbs is not None:
                            kept_discrete.append(dict(target.fixed))
                        for name, v in (("lp", state.lp), ("acceptance_rate", info.accept_prob),
                                        ("step_size", state.step_size), ("tree_depth", info.tree_depth),
                                        ("n_steps", info.n_steps), ("diverging", info.diverging),
                                        ("energy", info.energy)):
                            stats[name].append(v)
                bar.update(1)
                if progress and i % 20 == 0:
                    bar.set_postfix(step=f"{float(state.step_size.mean()):.3g}",
                                    acc=f"{float(info.accept_prob.mean()):.2f}")
        except KeyboardInterrupt:
            interrupted = True
            if not kept:
                bar.close()
                raise
        finally:
            bar.close()
        t_end = time.perf_counter()
        result = _build_result(target, program, kept, stats, state, getattr(k, "name", "mcmc"),
                               kept_discrete if gibbs is not None else None, log_likelihood)
    # flags are stored as 0/1: netCDF attributes have no boolean type
    result.attrs.update({
        "chains": chains, "warmup": warmup, "draws": result.num_draws, "thin": thin,
        "kernel": getattr(k, "name", str(kernel)), **program.attrs(), "interrupted": int(interrupted),
        "runtime_s": t_end - start_time,
        "warmup_s": t_sample - t_warm, "sampling_s": t_end - t_sample, "compile": compile_used,
        "compile_s": potential.record_s, "compiled": int(bool(compile) and potential.compiled_for(state.z)),
        "num_divergent": int(result.sample_stats["diverging"].sum()), "num_divergent_warmup": warmup_divergences,
        "grad_evals_spent": evals_spent, "grad_evals_useful": evals_useful,
        "warmup_respawned_chains": adapter.respawned,
        "lockstep_efficiency": evals_useful / evals_spent if evals_spent else 1.0,
    })
    if isinstance(k, ChEES):
        result.attrs["trajectory_length"] = k.trajectory_length
    if gibbs is not None:
        result.attrs["gibbs_sites"] = ",".join(gibbs.names)
    return result


def _build_result(target: UnconstrainedTarget, program: Program, kept: List[torch.Tensor],
                  stats: Dict[str, List[torch.Tensor]], state: ChainState, engine: str,
                  discrete: Optional[List[Dict[str, torch.Tensor]]] = None, log_likelihood: bool = True) -> Result:
    """Named samples (chain, draw, *shape), sample stats and log-likelihoods from the kept points.

    Log-likelihoods (chains x draws x observations: the largest part of a big run) go to the host chunk by chunk.

    ``discrete``: the Gibbs-sampled discrete values kept with each draw (batched, per chain); the
    continuous draws are mapped back with the discrete sites held at the values of the same draw.
    """
    lengths = [len(kept)] + [len(v) for v in stats.values()] + ([len(discrete)] if discrete is not None else [])
    n_kept = min(lengths)  # an interrupt may fall between appends
    kept, stats = kept[:n_kept], {k: v[:n_kept] for k, v in stats.items()}
    fixed_draws: Dict[str, torch.Tensor] = {}
    if discrete is not None:  # (chain, draw, *batched) -> (chain * draw, *batched), as the flat points below
        fixed_draws = {name: torch.stack([d[name] for d in discrete[:n_kept]], 1).flatten(0, 1) for name in discrete[0]}
    z = torch.stack(kept, 1)  # (chain, draw, D)
    c, n, d = z.shape
    flat = z.reshape(c * n, d)
    samples: Dict[str, List[torch.Tensor]] = {}
    loglik: Dict[str, List[torch.Tensor]] = {}
    chunk = max(1, 200_000 // max(d, 1))
    saved_fixed = target.fixed
    for s in range(0, c * n, chunk):
        if fixed_draws:
            target.fixed = {name: v[s:s + chunk] for name, v in fixed_draws.items()}
        out = target.constrain(flat[s:s + chunk], observed=log_likelihood)
        for name, v in out.items():
            if name == "__log_likelihood__":
                for o, ll in v.items():
                    loglik.setdefault(o, []).append(ll.cpu())
            else:
                samples.setdefault(name, []).append(v)
    target.fixed = saved_fixed

    def shape(v: torch.Tensor) -> torch.Tensor:
        return v.reshape((c, n) + tuple(v.shape[1:]))

    return Result(
        engine=engine,
        samples={k: shape(torch.cat(v)) for k, v in samples.items()},
        # diverging as 0/1 integers: netCDF (Result.save) has no boolean type; ArviZ reads either
        sample_stats={k: torch.stack(v, 1).to(torch.int8) if k == "diverging" else torch.stack(v, 1)
                      for k, v in stats.items() if v},
        log_likelihood={k: shape(torch.cat(v)) for k, v in loglik.items()},
        observed_data=program.observed_data(),
        dims={k: s.dims for k, s in program.sites.items()},
        diagnostics={"final_z": state.z, "final_step_size": state.step_size, "final_inv_mass": state.inv_mass},
    )


# --------------------------------------------------------------------------------- engines
@register_engine("nuts", "NUTS (multinomial, generalised U-turn) with all chains batched")
def nuts(model, *args, chains: int = 4, warmup: int = 500, draws: int = 1000, seed: Seed = None,
         device=None, dtype=None, model_kwargs=None, **options) -> Result:
    """Batched NUTS; see :func:`mcmc` for the options (``max_tree_depth``, ``target_accept``, ``compile``...)."""
    return mcmc(model, *args, kernel="nuts", chains=chains, warmup=warmup, draws=draws, seed=seed,
                device=device, dtype=dtype, model_kwargs=model_kwargs, **options)


@register_engine("hmc", "HMC with dual-averaging step size and windowed mass-matrix adaptation")
def hmc(model, *args, chains: int = 4, warmup: int = 500, draws: int = 1000, seed: Seed = None,
        device=None, dtype=None, model_kwargs=None, **options) -> Result:
    """Batched HMC (``num_steps`` or ``trajectory_length``); see :func:`mcmc`."""
    return mcmc(model, *args, kernel="hmc", chains=chains, warmup=warmup, draws=draws, seed=seed,
                device=device, dtype=dtype, model_kwargs=model_kwargs, **options)


@register_engine("mala", "Metropolis-adjusted Langevin with adaptive step size")
def mala(model, *args, chains: int = 4, warmup: int = 500, draws: int = 1000, seed: Seed = None,
         device=None, dtype=None, model_kwargs=None, **options) -> Result:
    """Batched MALA; see :func:`mcmc`."""
    return mcmc(model, *args, kernel="mala", chains=chains, warmup=warmup, draws=draws, seed=seed,
                device=device, dtype=dtype, model_kwargs=model_kwargs, **options)


@register_engine("rwmh", "random-walk Metropolis with adaptive scale and covariance")
def rwmh(model, *args, chains: int = 4, warmup: int = 500, draws: int = 1000, seed: Seed = None,
         device=None, dtype=None, model_kwargs=None, **options) -> Result:
    """Batched random-walk Metropolis; see :func:`mcmc`."""
    return mcmc(model, *args, kernel="rwmh", chains=chains, warmup=warmup, draws=draws, seed=seed,
                device=device, dtype=dtype, model_kwargs=model_kwargs, **options)


@register_engine("chees", "ChEES-HMC: jittered HMC with trajectory length adapted across many chains")
def chees(model, *args, chains: int = 64, warmup: int = 500, draws: int = 1000, seed: Seed = None,
          device=None, dtype=None, model_kwargs=None, **options) -> Result:
    """Batched ChEES-HMC (best with many chains); see :func:`mcmc`."""
    return mcmc(model, *args, kernel="chees", chains=chains, warmup=warmup, draws=draws, seed=seed,
                device=device, dtype=dtype, model_kwargs=model_kwargs, **options)


def elliptical_slice(model, *args, chains: int = 4, warmup: int = 500, draws: int = 1000, seed: Seed = None,
                     device=None, dtype=None, model_kwargs=None, **options) -> Result:
    """Batched elliptical slice sampling with a Gaussian reference fitted in warmup; see :func:`mcmc`."""
    return mcmc(model, *args, kernel="elliptical_slice", chains=chains, warmup=warmup, draws=draws, seed=seed,
                device=device, dtype=dtype, model_kwargs=model_kwargs, **options)
