"""Small predicates and shape helpers shared by the handlers (what kind of site a message is)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from pyro.distributions import Delta, MaskedDistribution
from pyro.poutine.subsample_messenger import _Subsample

PARTICLE_PLATE = "_ppl_particles"
"""Name of the plate that carries the particle / chain dimension."""


def is_sample(msg) -> bool:
    """A real ``pyro.sample`` site (not a plate's subsample draw)."""
    return msg["type"] == "sample" and not isinstance(msg["fn"], _Subsample)


def is_deterministic(msg) -> bool:
    """``pyro.deterministic``, or a site that ``poutine.reparam`` replaced by a masked Delta of its new value."""
    if msg["infer"].get("_deterministic", False):
        return True
    fn = msg["fn"]
    return (msg["is_observed"] and isinstance(fn, MaskedDistribution) and fn._mask is False
            and isinstance(fn.base_dist, Delta))


def is_latent(msg) -> bool:
    """A sample site whose value the program draws (neither observed nor deterministic)."""
    return is_sample(msg) and not msg["is_observed"] and not is_deterministic(msg)


def is_observation(msg) -> bool:
    """An observed sample site or a ``pyro.factor``: a likelihood term."""
    return is_sample(msg) and msg["is_observed"] and not is_deterministic(msg)


def particle_frame(msg) -> Optional[Tuple[int, int]]:
    """``(dim, size)`` of the particle plate this site sits in, or None when not batched."""
    for frame in msg["cond_indep_stack"]:
        if frame.name == PARTICLE_PLATE:
            return frame.dim, frame.size
    return None


def sum_per_particle(x: torch.Tensor, msg) -> torch.Tensor:
    """Sum a batch-shaped tensor of one site over every dimension but the particle dimension.

    ``x`` has the site's batch shape (a log-probability, a log-Jacobian). Returns shape ``(N,)``
    when the site is batched over N particles, a scalar otherwise.
    """
    frame = particle_frame(msg)
    if frame is None:
        return x.sum()
    dim, size = frame
    if x.dim() < -dim:  # broadcast along the particle dimension: same value for every particle
        return x.sum().expand(size)
    axis = x.dim() + dim
    x = x.movedim(axis, 0)
    return x.reshape(x.shape[0], -1).sum(1).expand(size)
