"""Batched MCMC: kernels with explicit state, usable alone, inside SMC, or through the driver.

Kernel interface (every kernel in this package)
-----------------------------------------------
A kernel is built from a batched log density and holds no chain state itself::

    logp_and_grad(z: (C, D)) -> (lp: (C,), grad: (C, D))     # any callable; points independent

    kernel = NUTS(logp_and_grad, max_tree_depth=10)           # or HMC(f, num_steps=10), MALA(f),
                                                              # RWMH(f), ChEES(f, trajectory_length=1.),
                                                              # EllipticalSlice(f, mean=0.)
    state = kernel.init(z, step_size=0.1, inv_mass=None, dense=False)   # evaluates f at z
    state, info = kernel.step(state)                          # one transition of every chain

``state`` is a :class:`ChainState` NamedTuple ``(z (C, D), lp (C,), grad (C, D), step_size (C,),
inv_mass (C, D) diagonal or (C, D, D) dense)``: per-chain step sizes and mass matrices, changed
with ``state._replace(step_size=...)``. ``info`` is a :class:`StepInfo` ``(accept_prob,
accepted, diverging, energy, n_steps, tree_depth)`` each (C,), plus ``n_evals`` (batched
evaluations actually run: the lockstep cost). Randomness comes from torch's global RNG (wrap in
``ppl.inference.runtime.seeded``). A kernel never caches anything about the target between
steps except inside ``state``, so for a tempered SMC move build the kernel for the current
temperature and re-``init`` (this re-evaluates lp/grad at the new beta)::

    f = lambda z: target.log_prob_and_grad(z, beta)      # or Potential(target)(z, beta): faster
    kernel = HMC(f, num_steps=5)
    state = kernel.init(z, step_size=eps_per_particle)    # eps: float or (C,) tensor
    for _ in range(k):
        state, info = kernel.step(state)
    eps = adapt(eps, info.accept_prob)                    # e.g. DualAveraging, or your own rule

Adaptation helpers: :class:`DualAveraging` (per-chain step size), :class:`Welford` (per-chain
mean / covariance -> regularised ``inv_mass``), :func:`stan_windows` (Stan's warmup windows),
:func:`find_reasonable_step_size`. :class:`Potential` gives a fast ``(z, beta) -> (lp, grad)``
for an ``UnconstrainedTarget`` (optionally recorded / compiled per batch shape).

Driver: :func:`mcmc` (any kernel, warmup, thinning, init from prior / dict / previous Result,
Ctrl-C keeps the draws so far) and the registered engines ``nuts``, ``hmc``, ``mala``, ``rwmh``,
``chees`` (plus ``elliptical_slice``, not registered for the CLI). Discrete latents with finite
support are Gibbs-sampled by enumeration between kernel steps (:class:`DiscreteGibbs`).
"""
from ppl.inference.mcmc.chees import ChEES
from ppl.inference.mcmc.driver import InitError, KERNELS, chees, elliptical_slice, hmc, mala, mcmc, nuts, rwmh
from ppl.inference.mcmc.elliptical import EllipticalSlice
from ppl.inference.mcmc.gibbs import DiscreteGibbs, discrete_sites
from ppl.inference.mcmc.hmc import HMC, MALA, leapfrog
from ppl.inference.mcmc.nuts import NUTS, is_turning
from ppl.inference.mcmc.potential import Potential
from ppl.inference.mcmc.rwmh import RWMH
from ppl.inference.mcmc.state import (ChainState, DualAveraging, LogDensityFn, StepInfo, Welford,
                                      find_reasonable_step_size, make_state, stan_windows)

__all__ = [
    "mcmc", "nuts", "hmc", "mala", "rwmh", "chees", "elliptical_slice", "KERNELS", "InitError",
    "NUTS", "HMC", "MALA", "RWMH", "ChEES", "EllipticalSlice", "Potential",
    "ChainState", "StepInfo", "LogDensityFn", "DualAveraging", "Welford", "stan_windows",
    "find_reasonable_step_size", "make_state", "leapfrog", "is_turning", "DiscreteGibbs", "discrete_sites",
]
