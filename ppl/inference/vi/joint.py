"""The joint p(z, x) of a program with the observations as inputs, for amortized training.

Amortized objectives need log p(x_b, z) at many different observations x_b in one batched run,
and pairs (z, x) drawn from the prior predictive. :class:`JointDensity` gives both on the flat
unconstrained space of :class:`~ppl.inference.target.UnconstrainedTarget`; the observed sites'
values are replaced per particle, so the data passed to the program only fix their shapes.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from pyro.poutine.messenger import Messenger

from ppl.handlers import UnconstrainMessenger
from ppl.handlers._sites import is_observation
from ppl.handlers.unconstrain import UNCONSTRAINED
from ppl.inference.program import ModelError, Program
from ppl.inference.target import UnconstrainedTarget


class _SetObservations(Messenger):
    """Observed sites take the given batched values (one per particle)."""

    def __init__(self, values: Dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.values = values

    def _process_message(self, msg) -> None:
        if is_observation(msg) and msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]


class _SimulateObservations(Messenger):
    """Observed sites are drawn from their distribution (the prior predictive) instead of fixed."""

    def _process_message(self, msg) -> None:
        if is_observation(msg):
            if msg["infer"].get("is_auxiliary", False):
                raise ModelError(
                    f"site {msg['name']!r} is a pyro.factor: the prior predictive cannot be simulated, "
                    "so simulation-based training (CSIS / NPE) does not apply to this model"
                )
            with torch.no_grad():
                msg["value"] = msg["fn"].sample()


class JointDensity:
    """log p(x, T(z)) + log|J| at per-particle observations x, and prior-predictive simulation.

    Observations are one tensor per particle: the observed site's named value ``(N, *shape)``
    when the program has one observed site, else all observed sites flattened and joined,
    ``(N, obs_dim)``. ``obs_shape`` gives one observation's shape.
    """

    def __init__(self, program: Program) -> None:
        self.program = program
        self.target = UnconstrainedTarget(program)
        self.observed = program.observed_sites()
        if not self.observed:
            raise ModelError(f"the model {program.name!r} has no observed sites to amortize over")
        if len(self.observed) == 1:
            self.obs_shape = tuple(next(iter(self.observed.values())).shape)
        else:
            self.obs_shape = (sum(int(s.shape.numel()) for s in self.observed.values()),)

    @property
    def dim(self) -> int:
        return self.target.dim

    def observation(self) -> torch.Tensor:
        """The program's own data as one observation of shape ``obs_shape``."""
        data = self.program.observed_data()
        return self._join({k: v.unsqueeze(0) for k, v in data.items()})[0]

    def _join(self, values: Dict[str, torch.Tensor]) -> torch.Tensor:
        if len(self.observed) == 1:
            return next(iter(values.values()))
        return torch.cat([values[k].reshape(values[k].shape[0], -1) for k in self.observed], 1)

    def _split(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        n = x.shape[0]
        if tuple(x.shape[1:]) != self.obs_shape:
            raise ValueError(f"observations must have shape (N, {', '.join(map(str, self.obs_shape))}), got {tuple(x.shape)}")
        if len(self.observed) == 1:
            (name, info), = self.observed.items()
            return {name: info.to_batched(x)}
        out, start = {}, 0
        for name, info in self.observed.items():
            size = int(info.shape.numel())
            out[name] = info.to_batched(x[:, start:start + size].reshape((n,) + tuple(info.shape)))
            start += size
        return out

    def log_joint(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x_i, T(z_i)) + log|J(z_i)| for points z (..., D) and observations x (..., *obs_shape)."""
        batch = z.shape[:-1]
        zf = z.reshape(-1, z.shape[-1])
        xf = x.expand(batch + tuple(self.obs_shape)).reshape((zf.shape[0],) + tuple(self.obs_shape))
        _, density = self.program.run(
            zf.shape[0], _SetObservations(self._split(xf)), UnconstrainMessenger(self.target.unflatten(zf))
        )
        total = density.get("prior") + density.get("likelihood") + density.get("jacobian")
        total = total + zf.new_zeros(zf.shape[0])
        return total.reshape(batch)

    def simulate(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``n`` pairs (z, x) from the prior predictive: z (n, D) unconstrained, x (n, *obs_shape)."""
        with torch.no_grad():
            trace, _ = self.program.run(int(n), _SimulateObservations(), UnconstrainMessenger())
            z = self.target.flatten({
                b.name: trace.nodes[b.name]["infer"][UNCONSTRAINED].expand((n,) + tuple(b.shape))
                for b in self.target.blocks
            })
            x = self._join(self.program.named_values(trace, kinds=("observed",)))
        return z, x
