"""Twisted SMC: user twist functions log psi_t reshape the weights while log Z stays unbiased.

With twists psi_t(x_t) the potentials become G_t psi_t(x_t) / psi_{t-1}(x_{t-1}) and the last
twist is 1, so the product telescopes to the original one: the final log Z is unbiased for the
model's evidence (intermediate log Z_t are not). The auxiliary particle filter is the special
case psi_t(x_t) = p_hat(y_{t+1} | x_t).
"""
from __future__ import annotations

from typing import Callable, Dict

import torch

from ppl.inference.smc.feynman_kac import FeynmanKac, State, _unpack

_PSI = "__log_psi__"


class TwistedFK(FeynmanKac):
    """``base`` with twist ``log_psi(t, state) -> (N,)`` applied at t = 0 .. T-2 (psi_{T-1} = 1).

    The current twist rides along in the state (key ``"__log_psi__"``), so it is resampled with
    the particles and never recomputed. A non-finite twist is an error naming the step.
    """

    def __init__(self, base: FeynmanKac, log_psi: Callable[[int, State], torch.Tensor]) -> None:
        self.base = base
        self.log_psi = log_psi
        self.num_steps = base.num_steps
        self.fixed_state_shapes = getattr(base, "fixed_state_shapes", True)

    def _twist(self, t: int, state: State, n: int) -> torch.Tensor:
        ref = next(iter(state.values()))
        if t >= self.num_steps - 1:
            return torch.zeros(n, dtype=ref.dtype if ref.is_floating_point() else torch.get_default_dtype(), device=ref.device)
        psi = self.log_psi(t, state)
        if not isinstance(psi, torch.Tensor) or psi.shape != (n,):
            raise ValueError(f"step {t}: the twist must return a tensor of shape ({n},), got "
                             f"{tuple(psi.shape) if isinstance(psi, torch.Tensor) else type(psi).__name__}")
        if not bool(torch.isfinite(psi).all()):
            raise ValueError(f"step {t}: the twist log psi is NaN or infinite for {int((~torch.isfinite(psi)).sum())} particle(s)")
        return psi

    def _wrap(self, t: int, out, prev_psi, n: int):
        state, log_g, record = _unpack(out, n, t, torch.zeros(()))
        psi = self._twist(t, state, n)
        state = dict(state)
        state[_PSI] = psi
        return state, log_g + psi - prev_psi, record

    def init(self, n: int):
        return self._wrap(0, self.base.init(n), 0.0, n)

    def step(self, t: int, state: State):
        inner: Dict[str, torch.Tensor] = {k: v for k, v in state.items() if k != _PSI}
        n = state[_PSI].shape[0]
        return self._wrap(t, self.base.step(t, inner), state[_PSI], n)

    def explain(self, t: int) -> str:
        return self.base.explain(t)

    def log_transition(self, t, prev, record):
        return self.base.log_transition(t, {k: v for k, v in prev.items() if k != _PSI}, record)


def twisted_smc(base: FeynmanKac, log_psi: Callable[[int, State], torch.Tensor], particles: int, **kwargs):
    """Run :func:`~ppl.inference.smc.run_smc` on ``base`` twisted by ``log_psi``; returns the SMCOutput."""
    from ppl.inference.smc.feynman_kac import run_smc

    return run_smc(TwistedFK(base, log_psi), particles, **kwargs)
