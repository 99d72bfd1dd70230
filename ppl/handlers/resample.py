"""Replay a recorded run with its particles reordered by ancestor indices."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace

from ppl.handlers._sites import is_latent, particle_frame


def particle_axis(site) -> Optional[int]:
    """Axis of a batched site's value that holds particles (None if the value is not batched)."""
    frame = particle_frame(site)
    if frame is None:
        return None
    event_dim = len(site["fn"].event_shape)
    axis = site["value"].dim() - event_dim + frame[0]
    return axis if axis >= 0 and site["value"].shape[axis] == frame[1] else None


def reorder(site, ancestors: torch.Tensor) -> torch.Tensor:
    """The site's value with its particles reordered: particle i takes particle ancestors[i]'s."""
    axis = particle_axis(site)
    value = site["value"]
    if axis is None:
        return value
    return value.index_select(axis, ancestors.to(value.device))


class ResampleMessenger(Messenger):
    """Latent sites recorded in ``trace`` are replayed, reordered along the particle dimension.

    This is how an engine continues a program from a resampled past: particle i gets the values
    of particle ``ancestors[i]`` at every site the trace holds; sites it lacks run as usual.
    """

    holds_particle_values = True  # batched per-particle state, no per-particle form: vectorized path only

    def __init__(self, trace: Trace, ancestors: torch.Tensor) -> None:
        super().__init__()
        if ancestors.dim() != 1:
            raise ValueError(f"ancestors must be 1-D, got shape {tuple(ancestors.shape)}")
        self.trace = trace
        self.ancestors = ancestors

    def _process_message(self, msg) -> None:
        if not is_latent(msg) or msg["done"]:
            return
        site = self.trace.nodes.get(msg["name"])
        if site is None:
            return
        msg["value"] = reorder(site, self.ancestors)
        msg["done"] = True


def resample(fn: Optional[Callable] = None, trace: Optional[Trace] = None,
             ancestors: Optional[torch.Tensor] = None):
    """Handler form of :class:`ResampleMessenger`."""
    if trace is None or ancestors is None:
        raise ValueError("resample needs a trace and ancestor indices")
    msngr = ResampleMessenger(trace, ancestors)
    return msngr(fn) if fn is not None else msngr
