"""Move latent sites to unconstrained space (``biject_to``), recording log-Jacobians."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from pyro.poutine.messenger import Messenger
from torch.distributions import biject_to

from ppl.errors import DiscreteLatentError
from ppl.handlers._sites import is_latent, particle_frame
from ppl.handlers.fix import squeeze_leading
from ppl.handlers.log_density import LOG_JACOBIAN

UNCONSTRAINED = "ppl_unconstrained"
"""``msg["infer"]`` key holding the site's unconstrained value."""


def support_transform(msg):
    """The bijection from unconstrained space to the support of a latent site."""
    support = msg["fn"].support
    if support.is_discrete:
        raise DiscreteLatentError(
            f"latent site {msg['name']!r} is discrete (support {support}); it has no "
            "unconstrained form. Use an engine that enumerates or Gibbs-samples discrete "
            "sites, or marginalise it out of the model."
        )
    return biject_to(support)


class UnconstrainMessenger(Messenger):
    """Each latent site x is written x = T(u) with T = ``biject_to(support)``.

    Sites named in ``values`` take x = T(values[name]); other latent sites are drawn as usual
    and their u = T^{-1}(x) is recorded. Either way ``msg["infer"]`` receives the unconstrained
    value (``ppl_unconstrained``) and log |det dT/du| (``ppl_log_jacobian``), which the
    log-density handler adds to the ``jacobian`` role. Discrete latents raise
    :class:`DiscreteLatentError` naming the site.
    """

    def __init__(self, values: Optional[Dict[str, torch.Tensor]] = None) -> None:
        super().__init__()
        self.values = dict(values or {})

    def _process_message(self, msg) -> None:
        if not is_latent(msg) or msg["done"]:
            return
        transform = support_transform(msg)
        name = msg["name"]
        if name in self.values:
            u = self.values[name]
            if particle_frame(msg) is None:  # one particle of a per-particle fallback run
                u = squeeze_leading(u, len(msg["fn"].batch_shape) + transform.domain.event_dim)
            msg["value"] = transform(u)
            msg["done"] = True
            msg["infer"] = dict(msg["infer"], **{UNCONSTRAINED: u})
        msg["infer"] = dict(msg["infer"], _ppl_transform=transform)

    def _postprocess_message(self, msg) -> None:
        transform = msg["infer"].pop("_ppl_transform", None) if is_latent(msg) else None
        if transform is None:
            return
        x = msg["value"]
        u = msg["infer"].get(UNCONSTRAINED)
        if u is None:
            u = transform.inv(x)
            msg["infer"][UNCONSTRAINED] = u
        log_jacobian = transform.log_abs_det_jacobian(u, x)
        extra = log_jacobian.dim() - len(msg["fn"].batch_shape)
        if extra > 0:  # some transforms leave event dims in place: reduce to the batch shape
            log_jacobian = log_jacobian.sum(tuple(range(-extra, 0)))
        msg["infer"][LOG_JACOBIAN] = log_jacobian


    # per-particle fallback protocol (ppl.inference.batching)
    def particle_state(self) -> Dict[str, torch.Tensor]:
        """The per-particle unconstrained values this handler holds, rows first."""
        return dict(self.values)

    def with_particle_state(self, state: Dict[str, torch.Tensor]) -> "UnconstrainMessenger":
        """This handler for one particle: ``state`` holds that particle's rows."""
        return UnconstrainMessenger(state)


def unconstrain(fn: Optional[Callable] = None, values: Optional[Dict[str, torch.Tensor]] = None):
    """Handler form of :class:`UnconstrainMessenger`."""
    msngr = UnconstrainMessenger(values)
    return msngr(fn) if fn is not None else msngr
