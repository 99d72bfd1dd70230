"""Hold latent sites at given values (batched over particles, or one particle's in an unbatched run)."""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch
from pyro.poutine.messenger import Messenger

from ppl.handlers._sites import is_sample, particle_frame


def squeeze_leading(value: torch.Tensor, ndim: int) -> torch.Tensor:
    """Drop leading size-1 dims of ``value`` until it has ``ndim`` dims.

    One particle's slice of a batched value keeps the singleton dims that only broadcast against
    other plates; an unbatched run of the model has them not. Dims that are not size 1 are kept
    (the model then sees the shape mismatch, which batching verification reports).
    """
    while value.dim() > ndim and value.shape[0] == 1:
        value = value.squeeze(0)
    return value


class FixMessenger(Messenger):
    """Latent sites named in ``values`` take those values (the site is then not drawn).

    In a batched run a value has shape ``(N or 1, *batched_shape)``; in an unbatched run (one
    particle of a per-particle fallback) it is one particle's slice, trimmed to the site's own
    shape. ``shared`` holds values that are the same for every particle and are used as given
    (e.g. a plate's subsample indices). Unlike ``poutine.condition`` the sites stay latent.
    """

    def __init__(self, values: Mapping[str, torch.Tensor], shared: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        super().__init__()
        self.values = dict(values)
        self.shared = dict(shared or {})

    def _process_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        if msg["name"] in self.shared:
            msg["value"] = self.shared[msg["name"]]
            msg["done"] = True
            return
        if msg["name"] not in self.values:
            return
        value = self.values[msg["name"]]
        if is_sample(msg) and particle_frame(msg) is None:
            fn = msg["fn"]
            value = squeeze_leading(value, len(fn.batch_shape) + len(fn.event_shape))
        msg["value"] = value
        msg["done"] = True

    # per-particle fallback protocol (ppl.inference.batching)
    def particle_state(self) -> Dict[str, torch.Tensor]:
        """The per-particle tensors this handler holds, rows first (N rows, or 1 for all)."""
        return dict(self.values)

    def with_particle_state(self, state: Mapping[str, torch.Tensor]) -> "FixMessenger":
        """This handler for one particle: ``state`` holds that particle's rows."""
        return FixMessenger(state, self.shared)
