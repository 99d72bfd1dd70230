"""Random-walk Metropolis batched over chains, with a per-chain adaptive proposal scale.

The proposal is ``z + step_size * xi`` with ``xi ~ N(0, inv_mass)``; the driver adapts
``step_size`` (towards 23.4% acceptance) and ``inv_mass`` (the posterior covariance) in warmup.
Gradients are not used, but the state keeps the interface of the gradient kernels.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from ppl.inference.mcmc.state import ChainState, LogDensityFn, StepInfo, make_state, scaled_noise


class RWMH:
    """Gaussian random-walk Metropolis; ``step(state)`` makes one proposal per chain."""

    name = "rwmh"
    target_accept = 0.234

    def __init__(self, logp_and_grad: LogDensityFn) -> None:
        self.logp_and_grad = logp_and_grad

    def init(self, z: torch.Tensor, step_size: Union[float, torch.Tensor, None] = None,
             inv_mass: Optional[torch.Tensor] = None, dense: bool = False) -> ChainState:
        if step_size is None:
            step_size = 2.38 / math.sqrt(z.shape[1])
        return make_state(self.logp_and_grad, z, step_size, inv_mass, dense)

    def probe(self, state: ChainState) -> torch.Tensor:
        _, info = self.step(state)
        return info.accept_prob

    def step(self, state: ChainState) -> Tuple[ChainState, StepInfo]:
        z1 = state.z + state.step_size.unsqueeze(-1) * scaled_noise(state.inv_mass, state.z)
        lp1, g1 = self.logp_and_grad(z1)
        log_a = torch.nan_to_num(lp1 - state.lp, nan=-math.inf)
        accept = torch.rand_like(log_a).log() < log_a
        m = accept.unsqueeze(-1)
        new = ChainState(torch.where(m, z1, state.z), torch.where(accept, lp1, state.lp),
                         torch.where(m, g1, state.grad), state.step_size, state.inv_mass)
        ones = torch.ones_like(accept, dtype=torch.long)
        info = StepInfo(accept_prob=log_a.clamp(max=0.0).exp(), accepted=accept,
                        diverging=torch.zeros_like(accept), energy=-new.lp, n_steps=ones,
                        tree_depth=torch.zeros_like(ones), n_evals=1)
        return new, info
