"""Batch a program over particles or chains: one plate left of every plate the program has."""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from pyro.poutine.plate_messenger import PlateMessenger

from ppl.handlers._sites import PARTICLE_PLATE


class BatchMessenger(PlateMessenger):
    """Runs the program once for ``size`` independent particles (or chains).

    It is a vectorised ``pyro.plate`` placed at ``dim = -(max_plate_nesting + 1)``, so every
    site gains a leading particle dimension and the program's own plates, masks, factors and
    subsampling keep working unchanged. Particles are dimension 0 of every batched value.
    """

    def __init__(
        self,
        size: int,
        max_plate_nesting: int,
        device: Optional[Union[str, torch.device]] = None,
    ) -> None:
        if int(size) < 1:
            raise ValueError(f"batch size must be a positive integer, got {size!r}")
        if max_plate_nesting < 0:
            raise ValueError(f"max_plate_nesting must be >= 0, got {max_plate_nesting}")
        super().__init__(
            name=PARTICLE_PLATE,
            size=int(size),
            dim=-(max_plate_nesting + 1),
            device=str(device) if device is not None else None,
        )


def batch(
    fn: Optional[Callable] = None,
    size: int = 1,
    max_plate_nesting: int = 0,
    device: Optional[Union[str, torch.device]] = None,
):
    """Handler form of :class:`BatchMessenger` (usable as decorator, wrapper or context)."""
    msngr = BatchMessenger(size, max_plate_nesting, device)
    return msngr(fn) if fn is not None else msngr
