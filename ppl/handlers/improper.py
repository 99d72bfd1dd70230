"""Initial values for latent sites whose prior cannot be sampled (Stan's implicit flat priors).

``pyro.distributions.ImproperUniform`` has log density 0 and no ``sample``. Engines still need
a starting point for such sites (and :class:`~ppl.inference.program.Program` needs one value to
learn a site's shape), so this handler does what Stan does: draw u ~ Uniform(-2, 2) in
unconstrained space and set x = biject_to(support)(u). It is an *initialisation*, not a prior
draw: engines that weight prior draws (importance sampling from the prior, SMC from the prior)
must not use it, and they fail with ImproperUniform's NotImplementedError as before.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from pyro.distributions import ImproperUniform
from pyro.poutine.messenger import Messenger
from torch.distributions import biject_to

from ppl.handlers._sites import is_latent

IMPROPER_INIT = "ppl_improper_init"
"""``msg["infer"]`` flag set on sites whose value this handler chose."""


def cannot_sample(fn) -> bool:
    """Whether ``fn`` is (a wrapper around) an improper distribution with no ``sample``."""
    while True:
        if isinstance(fn, ImproperUniform):
            return True
        base = getattr(fn, "base_dist", None)  # Independent, MaskedDistribution, ExpandedDistribution
        if base is None or base is fn:
            return False
        fn = base


class ImproperInitMessenger(Messenger):
    """Gives latent sites with an unsampleable (improper) prior a Stan-style initial value.

    Enter it outermost (first) so that any handler that already fixes a site's value (replay,
    condition, an unconstrained point, a proposal) takes precedence; it only acts on sites that
    are still undrawn. The unconstrained draw is Uniform(low, high), (-2, 2) as in Stan.
    """

    def __init__(self, low: float = -2.0, high: float = 2.0) -> None:
        super().__init__()
        if not low < high:
            raise ValueError(f"need low < high for the initial range, got ({low}, {high})")
        self.low, self.high = float(low), float(high)

    def _process_message(self, msg) -> None:
        if not is_latent(msg) or msg["done"] or msg["value"] is not None or not cannot_sample(msg["fn"]):
            return
        fn = msg["fn"]
        transform = biject_to(fn.support)
        shape = transform.inv.forward_shape(fn.shape())
        u = torch.rand(shape) * (self.high - self.low) + self.low
        msg["value"] = transform(u)
        msg["done"] = True
        msg["infer"] = dict(msg["infer"], **{IMPROPER_INIT: True})


def improper_init(fn: Optional[Callable] = None, low: float = -2.0, high: float = 2.0):
    """Handler form of :class:`ImproperInitMessenger`."""
    msngr = ImproperInitMessenger(low, high)
    return msngr(fn) if fn is not None else msngr
