"""Temper a program: multiply its likelihood terms (observed sites and factors) by beta."""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from pyro.poutine.messenger import Messenger

from ppl.errors import HandlerError
from ppl.handlers._sites import is_observation, particle_frame


class TemperMessenger(Messenger):
    """Scales every likelihood term by ``beta``: the target becomes prior x likelihood^beta.

    ``beta`` is a number or a tensor with one temperature per particle (shape ``(N,)``), which
    is placed on the particle dimension of each site.
    """

    def __init__(self, beta: Union[float, torch.Tensor]) -> None:
        super().__init__()
        if isinstance(beta, torch.Tensor) and beta.dim() > 1:
            raise HandlerError(f"beta must be a scalar or have shape (N,), got {tuple(beta.shape)}")
        self.beta = beta

    def _process_message(self, msg) -> None:
        if not is_observation(msg):
            return
        beta = self.beta
        if isinstance(beta, torch.Tensor) and beta.dim() == 1:
            frame = particle_frame(msg)
            if frame is None:
                raise HandlerError(
                    f"site {msg['name']!r}: a per-particle beta needs the program batched "
                    "over particles (ppl.handlers.batch)"
                )
            dim, size = frame
            if beta.shape[0] != size:
                raise HandlerError(
                    f"site {msg['name']!r}: beta has {beta.shape[0]} entries, "
                    f"the particle dimension has {size}"
                )
            beta = beta.reshape((size,) + (1,) * (-dim - 1))
        msg["scale"] = beta * msg["scale"]


def temper(fn: Optional[Callable] = None, beta: Union[float, torch.Tensor] = 1.0):
    """Handler form of :class:`TemperMessenger`."""
    msngr = TemperMessenger(beta)
    return msngr(fn) if fn is not None else msngr
