"""Per-particle log-density accounting, split by role (prior, likelihood, proposal, jacobian)."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger

from ppl.handlers._sites import is_latent, is_observation, is_sample, sum_per_particle

ROLES = ("prior", "likelihood", "proposal", "jacobian", "prior_excess")

LOG_Q = "ppl_log_q"
"""``msg["infer"]`` key where a proposal handler records the site's log q (batch-shaped)."""
LOG_JACOBIAN = "ppl_log_jacobian"
"""``msg["infer"]`` key where the unconstrain handler records log |det J| (batch-shaped)."""


class LogDensityMessenger(Messenger):
    """Accumulates each particle's log-density while the program runs.

    ``prior`` sums the latent sites, ``likelihood`` the observed sites and factors (both with
    Pyro's scale and mask applied, exactly as ``Trace.log_prob_sum``), ``proposal`` the log q
    recorded by a proposal handler and ``jacobian`` the log-Jacobians recorded by the
    unconstrain handler. ``prior_excess`` is what Pyro's scale and mask on latent sites
    (``poutine.scale``, power priors) add to their plain log density: the log weight that takes a
    draw from the sites' own distributions to the scaled prior (absent when no latent is scaled
    or masked). ``site_terms`` keeps each site's per-particle total, so an engine can say
    which site made a weight NaN. Totals have shape ``(N,)`` under a batch handler.
    """

    def __init__(self) -> None:
        super().__init__()
        self._reset()

    def _reset(self) -> None:
        self.terms: Dict[str, torch.Tensor] = {}
        self.site_terms: Dict[str, torch.Tensor] = {}

    def __enter__(self):
        self._reset()
        return super().__enter__()

    def _add(self, role: str, value: torch.Tensor) -> None:
        self.terms[role] = self.terms[role] + value if role in self.terms else value

    def _postprocess_message(self, msg) -> None:
        if not is_sample(msg):
            return
        if is_latent(msg) or is_observation(msg):
            raw = msg["fn"].log_prob(msg["value"], *msg["args"], **msg["kwargs"])
            log_p = sum_per_particle(scale_and_mask(raw, msg["scale"], msg["mask"]), msg)
            self.site_terms[msg["name"]] = log_p
            self._add("prior" if is_latent(msg) else "likelihood", log_p)
            if is_latent(msg) and _scaled_or_masked(msg):
                self._add("prior_excess", log_p - sum_per_particle(raw, msg))
        if LOG_Q in msg["infer"]:
            self._add("proposal", sum_per_particle(msg["infer"][LOG_Q], msg))
        if LOG_JACOBIAN in msg["infer"]:
            self._add("jacobian", sum_per_particle(msg["infer"][LOG_JACOBIAN], msg))

    def get(self, role: str) -> torch.Tensor | float:
        """The accumulated term of ``role`` (0.0 when no site contributed)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {ROLES}")
        return self.terms.get(role, 0.0)

    @property
    def log_joint(self) -> torch.Tensor | float:
        """log p(latents, observations) = prior + likelihood."""
        return self.get("prior") + self.get("likelihood")


def _scaled_or_masked(msg) -> bool:
    scale = msg["scale"]
    return msg["mask"] is not None or isinstance(scale, torch.Tensor) or scale != 1.0


def log_density(fn: Optional[Callable] = None):
    """Handler form of :class:`LogDensityMessenger`."""
    msngr = LogDensityMessenger()
    return msngr(fn) if fn is not None else msngr
