"""Variational SMC (FIVO): learned per-step proposals trained through the differentiable SMC bound.

A proposal ``q(t, x_prev, y_t) -> distribution over x_t`` (batched over particles) guides a
state-space model written with plain-torch densities (:class:`GuidedStateSpaceFK`, the fast
path) or as a Pyro step program (:func:`as_proposal_program` turns the same trained proposal into
the ``proposal=`` program of :func:`ppl.inference.smc.particle_filter`). :func:`fivo` maximises
E[log Z_hat] of ``run_smc(..., differentiable=True)``; resampling gradients are dropped (FIVO).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple, Union

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppl.inference.runtime import Seed, seeded
from ppl.inference.smc.feynman_kac import FeynmanKac, State, run_smc
from ppl.inference.vi.train import History, train

Proposal = Callable[[int, torch.Tensor, torch.Tensor], torch.distributions.Distribution]


class LinearGaussianProposal(nn.Module):
    """q(x_t | x_{t-1}, y_t) = Normal(mean, sd), mean and log sd linear in (x_{t-1}, y_t), shared over t >= 1.

    A separate linear map of y_0 gives q(x_0 | y_0). For a linear-Gaussian state-space model the
    locally optimal proposal p(x_t | x_{t-1}, y_t) is of exactly this form, so it is learnable.
    ``state_dim`` / ``obs_dim`` are the flattened sizes; a state of size 1 may be stored as (n,).
    """

    def __init__(self, state_dim: int = 1, obs_dim: int = 1, dtype: torch.dtype = torch.float64,
                 device: Optional[Any] = None) -> None:
        super().__init__()
        self.state_dim, self.obs_dim = int(state_dim), int(obs_dim)
        d, o = self.state_dim, self.obs_dim
        self.step = nn.Linear(d + o, 2 * d, dtype=dtype, device=device)
        self.first = nn.Linear(o, 2 * d, dtype=dtype, device=device)
        for lin in (self.step, self.first):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, t: int, x_prev: torch.Tensor, y_t: torch.Tensor) -> dist.Distribution:
        """The proposal at step t for particles ``x_prev`` (n, ...) (ignored at t = 0) and observation ``y_t``.

        ``y_t`` is one observation shared by all particles or one per particle (n rows).
        """
        n = x_prev.shape[0]
        y = torch.as_tensor(y_t, dtype=self.step.weight.dtype, device=x_prev.device)
        y = y.reshape(n, self.obs_dim) if y.numel() == n * self.obs_dim and n > 1 else y.reshape(1, -1).expand(n, self.obs_dim)
        if t == 0:
            out = self.first(y)
        else:
            out = self.step(torch.cat([x_prev.reshape(n, -1).to(y.dtype), y], -1))
        loc, log_sd = out.chunk(2, -1)
        shape = x_prev.shape
        d = dist.Normal(loc.reshape(shape), log_sd.exp().reshape(shape), validate_args=False)
        return d.to_event(len(shape) - 1) if len(shape) > 1 else d


class GuidedStateSpaceFK(FeynmanKac):
    """A state-space model from plain-torch densities, proposing from ``proposal`` (or the prior).

    ``init_dist(n)``: law of x_0 with batch shape (n,); ``transition(t, x_prev)``: law of x_t;
    ``log_likelihood(t, x_t, y_t) -> (n,)``. With a proposal, x_t ~ q(t, x_prev, y_t)
    (reparameterised) and log G_t = log p(x_t | x_{t-1}) + log g_t - log q; x_0 uses q(0, zeros, y_0)
    unless ``propose_init=False``. The state and record are ``{key: x_t}``. With ``batched=True``
    ``data`` is (T, B, ...): B sequences, run as ``systems=B`` (system b sees sequence b), which is
    how :func:`fivo` trains one proposal on many sequences at once.
    """

    def __init__(self, data: torch.Tensor, init_dist: Callable[[int], torch.distributions.Distribution],
                 transition: Callable[[int, torch.Tensor], torch.distributions.Distribution],
                 log_likelihood: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
                 proposal: Optional[Proposal] = None, *, key: str = "x", propose_init: bool = True,
                 batched: bool = False) -> None:
        if len(data) < 1:
            raise ValueError("data must hold at least one observation")
        self.data, self.num_steps = data, len(data)
        self.init_dist, self.transition, self.log_likelihood = init_dist, transition, log_likelihood
        self.proposal, self.key, self.propose_init, self.batched = proposal, key, propose_init, batched

    def _y(self, t: int, n: int) -> torch.Tensor:
        """Observation t, repeated per particle when each system has its own sequence."""
        y = self.data[t]
        if not self.batched:
            return y
        if n % y.shape[0]:
            raise ValueError(f"batched data has {y.shape[0]} sequences, which does not divide {n} particles; "
                             "run with systems equal to the number of sequences")
        return y.repeat_interleave(n // y.shape[0], 0)

    def _draw(self, p: torch.distributions.Distribution, q: Optional[torch.distributions.Distribution]):
        if q is None:
            return p.sample(), 0.0
        x = q.rsample() if q.has_rsample else q.sample()
        return x, p.log_prob(x) - q.log_prob(x)

    def init(self, n: int):
        p = self.init_dist(n)
        q = None
        if self.proposal is not None and self.propose_init:
            q = self.proposal(0, torch.zeros(p.batch_shape + p.event_shape, dtype=self.data.dtype, device=self.data.device),
                              self._y(0, n))
        x, lw = self._draw(p, q)
        return {self.key: x}, lw + self.log_likelihood(0, x, self._y(0, n))

    def step(self, t: int, state: State):
        xp = state[self.key]
        p = self.transition(t, xp)
        y = self._y(t, xp.shape[0])
        q = self.proposal(t, xp, y) if self.proposal is not None else None
        x, lw = self._draw(p, q)
        return {self.key: x}, lw + self.log_likelihood(t, x, y)

    def log_transition(self, t: int, prev: State, record) -> torch.Tensor:
        return self.transition(t, prev[self.key]).log_prob(record[self.key])


def lgssm_fk(y: torch.Tensor, a: float = 0.9, q: float = 1.0, r: float = 0.5, proposal: Optional[Proposal] = None,
             s0: Optional[float] = None, propose_init: bool = True, batched: bool = False) -> GuidedStateSpaceFK:
    """The 1-D LGSSM of :mod:`ppl.models.lgssm` as a :class:`GuidedStateSpaceFK` (state key ``"x"``; y (T,) or (T, B) batched)."""
    s0 = q / (1 - a * a) ** 0.5 if s0 is None else s0
    zero = torch.zeros((), dtype=y.dtype, device=y.device)
    return GuidedStateSpaceFK(
        y,
        lambda n: dist.Normal(zero.expand(n), s0, validate_args=False),
        lambda t, xp: dist.Normal(a * xp, q, validate_args=False),
        lambda t, x, y_t: dist.Normal(x, r, validate_args=False).log_prob(y_t),
        proposal, propose_init=propose_init, batched=batched,
    )


def lgssm_sample(num: int, T: int, a: float = 0.9, q: float = 1.0, r: float = 0.5, s0: Optional[float] = None,
                 dtype: torch.dtype = torch.float64, device: Optional[Any] = None) -> torch.Tensor:
    """``num`` observation sequences (T, num) from the 1-D LGSSM (global RNG; wrap in ``seeded``), for training on many."""
    s0 = q / (1 - a * a) ** 0.5 if s0 is None else s0
    x = s0 * torch.randn(num, dtype=dtype, device=device)
    ys = []
    for t in range(T):
        if t > 0:
            x = a * x + q * torch.randn_like(x)
        ys.append(x + r * torch.randn_like(x))
    return torch.stack(ys)


def fivo_bound(fk: FeynmanKac, particles: int = 16, *, systems: int = 1, resampling: str = "multinomial",
               ess_threshold: float = 0.5, seed: Seed = None) -> torch.Tensor:
    """The FIVO bound: mean over ``systems`` of log Z_hat from one differentiable SMC run (a scalar with grad)."""
    out = run_smc(fk, particles, systems=systems, resampling=resampling, ess_threshold=ess_threshold,
                  keep_history=False, differentiable=True, seed=seed)
    return out.log_evidence.mean()


def fivo(make_fk: Union[FeynmanKac, Callable[[], FeynmanKac]], params: Iterable[torch.Tensor], *,
         particles: int = 16, systems: int = 4, steps: int = 300, lr: float = 1e-2,
         resampling: str = "multinomial", ess_threshold: float = 0.5, seed: Seed = None, **train_kwargs: Any) -> History:
    """Train proposal ``params`` by maximising E[log Z_hat] / T of SMC on ``make_fk`` (an FK model or a factory).

    Each step runs ``systems`` independent differentiable SMC systems of ``particles`` particles;
    gradients flow through reparameterised proposals and weights, not through resampling.
    Further keywords go to :func:`ppl.inference.vi.train` (optimizer, schedule, clip_norm, eval_fn, ...).
    """
    factory = make_fk if callable(make_fk) and not isinstance(make_fk, FeynmanKac) else (lambda: make_fk)
    T = max(int(factory().num_steps), 1)

    def loss(step: int, batch) -> torch.Tensor:
        return -fivo_bound(factory(), particles, systems=systems, resampling=resampling,
                           ess_threshold=ess_threshold) / T

    with seeded(seed):
        return train(loss, list(params), steps=steps, lr=lr, seed=seed, **train_kwargs)


def as_proposal_program(q: Proposal, site: Union[str, Callable[[int], str]] = "x_{t}", *, state_key: str = "x",
                        first_step: int = 1, detach: bool = True) -> Callable[..., None]:
    """A trained proposal as the ``proposal=`` program of :func:`ppl.inference.smc.particle_filter`.

    The program samples ``site`` (a format string in ``t`` or a function of t) from
    ``q(t, state[state_key], y_t)`` at steps t >= ``first_step`` (in the step form of
    :mod:`ppl.models.lgssm` x_0 is drawn by ``init``, so step 0 samples nothing). With ``detach``
    (default) it runs under ``torch.no_grad`` so the filter's particles carry no graph;
    ``detach=False`` keeps the graph, to train through the Pyro step form with :func:`fivo`.
    """
    name = site.format if isinstance(site, str) else None

    def proposal(state, t, y_t, **kwargs) -> None:
        if t < first_step:
            return
        with torch.no_grad() if detach else contextlib.nullcontext():
            d = q(t, state[state_key], y_t)
        pyro.sample(name(t=t) if name is not None else site(t), d)

    return proposal


def log_evidence_spread(fk: FeynmanKac, particles: int, systems: int = 200, *, resampling: str = "systematic",
                        ess_threshold: float = 0.5, seed: Seed = None) -> Tuple[torch.Tensor, float, float]:
    """``systems`` independent log Z estimates in one batched run, with their variance and mean."""
    out = run_smc(fk, particles, systems=systems, resampling=resampling, ess_threshold=ess_threshold,
                  keep_history=False, seed=seed)
    lz = out.log_evidence.detach().double()
    return lz, float(lz.var()), float(lz.mean())


__all__: Sequence[str] = ["LinearGaussianProposal", "GuidedStateSpaceFK", "lgssm_fk", "lgssm_sample", "fivo_bound", "fivo",
                          "as_proposal_program", "log_evidence_spread"]
