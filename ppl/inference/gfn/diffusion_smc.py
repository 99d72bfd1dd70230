"""A trained diffusion sampler as the proposal of an SMC sampler: resampled trajectories, unbiased log Z.

The path-space target of a diffusion sampler is pi(tau) = R(x_N) prod_k P_B(x_k | x_{k+1}) / Z. Run
the forward policy P_F step by step as the SMC proposal, with intermediate targets whose marginal
at step k is psi_k(x_k); the incremental weight of step k -> k+1 is

    G = psi_{k+1}(x_{k+1}) P_B(x_k | x_{k+1}) / (psi_k(x_k) P_F(x_{k+1} | x_k)),

and with psi_N = R the weights telescope to R(x_N) P_B(tau | x_N) / P_F(tau): whatever the twists,
the SMC estimate of Z is unbiased (the Feynman-Kac product of potentials is the importance weight).
Twists only decide how useful the resampling in between is. Under the Brownian reference the
target's marginal at t_k is N(x; 0, sigma^2 t_k) E_ref[R(x_N) / N(x_N; 0, sigma^2 T) | x_k = x];
``twist="annealed"`` interpolates that expectation geometrically,

    log psi_k(x) = log N(x; 0, sigma^2 t_k) + (t_k / T) (log R(x) - log N(x; 0, sigma^2 T)),

and ``twist="none"`` keeps psi_k = 1 before the last step (plain importance sampling, resampled on
the path weights alone). The result is an :class:`~ppl.inference.smc.feynman_kac.SMCOutput`, with
the Lee-Whiteley standard error, ESS and resampling history, and the particles' terminal points.
"""
from __future__ import annotations

import math

import torch

from ppl.inference.gfn.diffusion import LOG_2PI, DiffusionSampler
from ppl.inference.runtime import Seed
from ppl.inference.smc.feynman_kac import FeynmanKac, SMCOutput, run_smc


class DiffusionFK(FeynmanKac):
    """Feynman-Kac model of a :class:`DiffusionSampler`: state ``{"x": (n, D)}`` at steps k = 1..N."""

    def __init__(self, sampler: DiffusionSampler, twist: str = "annealed") -> None:
        if twist not in ("annealed", "none"):
            raise ValueError(f"twist must be 'annealed' or 'none', got {twist!r}")
        self.s, self.twist = sampler, twist
        self.num_steps = sampler.cfg.steps  # FK step t moves the diffusion from x_t to x_{t+1}

    def _log_psi(self, k: int, x: torch.Tensor, log_r: torch.Tensor) -> torch.Tensor:
        s, n_steps = self.s, self.s.cfg.steps
        if k == n_steps:
            return log_r
        if self.twist == "none":
            return torch.zeros_like(log_r)
        beta = k / n_steps
        t_k, t_n = float(s.times[k]), float(s.times[-1])
        return self._log_ref(x, t_k) + beta * (log_r - self._log_ref(x, t_n))

    def _log_ref(self, x: torch.Tensor, t: float) -> torch.Tensor:
        var = self.s.cfg.sigma ** 2 * t
        return -0.5 * (x.pow(2).sum(-1) / var + x.shape[-1] * (LOG_2PI + math.log(var)))

    def _move(self, k: int, x: torch.Tensor):
        """x_{k+1} ~ P_F(. | x_k) and log P_F of the move."""
        s = self.s
        mean = x + s._drift(x, s.times[k]) * s.dt
        sd = s.cfg.sigma * math.sqrt(s.dt)
        nxt = mean + sd * torch.randn_like(mean)
        return nxt, s._gauss(nxt, mean, sd ** 2)

    def _log_pb(self, k: int, x_k: torch.Tensor, x_next: torch.Tensor) -> torch.Tensor:
        """Brownian bridge log P_B(x_k | x_{k+1}); x_0 = 0 is deterministic (k = 0 gives 0)."""
        if k == 0:
            return torch.zeros(x_k.shape[0], dtype=x_k.dtype, device=x_k.device)
        s = self.s
        r = float(s.times[k] / s.times[k + 1])
        var = s.cfg.sigma ** 2 * s.dt * r
        return s._gauss(x_k, r * x_next, var)

    def _weigh(self, k: int, x: torch.Tensor, nxt: torch.Tensor, log_pf: torch.Tensor, log_psi_prev: torch.Tensor):
        log_r = self.s.log_reward(nxt)
        log_psi = self._log_psi(k + 1, nxt, log_r)
        log_g = log_psi - log_psi_prev + self._log_pb(k, x, nxt) - log_pf
        return {"x": nxt, "log_psi": log_psi}, torch.nan_to_num(log_g, nan=-math.inf), {"x": nxt}

    @torch.no_grad()
    def init(self, n: int):
        s = self.s
        x0 = torch.zeros(n, s.dim, device=s.device, dtype=s.dtype)
        nxt, log_pf = self._move(0, x0)
        return self._weigh(0, x0, nxt, log_pf, torch.zeros(n, device=s.device, dtype=s.dtype))

    @torch.no_grad()
    def step(self, t: int, state):
        nxt, log_pf = self._move(t, state["x"])
        return self._weigh(t, state["x"], nxt, log_pf, state["log_psi"])


def diffusion_smc(sampler: DiffusionSampler, particles: int = 4096, *, twist: str = "annealed",
                  resampling: str = "systematic", ess_threshold: float = 0.5, systems: int = 1,
                  seed: Seed = None) -> SMCOutput:
    """SMC with ``sampler``'s forward policy as proposal; ``out.log_evidence`` estimates log Z (unbiased in Z).

    ``out.state["x"]`` holds the terminal points with weights ``out.normalized_weights``.
    """
    if int(particles) < 1:
        raise ValueError(f"particles must be a positive integer, got {particles!r}")
    return run_smc(DiffusionFK(sampler, twist), int(particles), systems=systems, resampling=resampling,
                   ess_threshold=ess_threshold, keep_history=False, seed=seed, device=sampler.device)
