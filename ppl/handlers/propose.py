"""Draw a program's latent sites from a proposal (a guide's trace), recording log q per site."""
from __future__ import annotations

from typing import Callable, Optional, Set

from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace

from ppl.errors import GuideMismatchError
from ppl.handlers._sites import is_latent, is_sample
from ppl.handlers.log_density import LOG_Q


def proposal_sites(guide_trace: Trace) -> Set[str]:
    """Names of the sites a guide trace proposes (its latent sample sites)."""
    return {name for name, site in guide_trace.nodes.items() if is_latent(site)}


class ProposeMessenger(Messenger):
    """Latent sites take the values a guide drew (``guide_trace``) and record their log q.

    The guide is run first, batched like the model; here each latent site of the model is
    replaced by the guide's value, and ``msg["infer"]["ppl_log_q"]`` receives the guide's log
    density of it, which the log-density handler sums into the ``proposal`` role. With
    ``strict=True`` a model latent the guide lacks is an error (otherwise it is drawn from the
    prior and, being its own proposal, cancels in the weight); :meth:`check_all_used` reports
    guide sites the model never asked for.
    """

    holds_particle_values = True  # batched per-particle state, no per-particle form: vectorized path only

    def __init__(self, guide_trace: Trace, strict: bool = True) -> None:
        super().__init__()
        self.guide_trace = guide_trace
        self.strict = strict
        self.used: Set[str] = set()

    def __enter__(self):
        self.used = set()
        return super().__enter__()

    def _process_message(self, msg) -> None:
        if not is_latent(msg) or msg["done"]:
            return
        name = msg["name"]
        site = self.guide_trace.nodes.get(name)
        if site is None or not is_sample(site):
            if self.strict:
                raise GuideMismatchError(
                    f"the guide has no site {name!r}, which is a latent site of the model"
                )
            return
        if site["is_observed"]:
            raise GuideMismatchError(f"site {name!r} is observed in the guide but latent in the model")
        log_q = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
        msg["value"] = site["value"]
        msg["done"] = True
        msg["infer"] = dict(msg["infer"], **{LOG_Q: scale_and_mask(log_q, 1.0, site["mask"])})
        self.used.add(name)

    def check_all_used(self) -> None:
        """Raise if the guide proposed a site the model does not have."""
        extra = sorted(proposal_sites(self.guide_trace) - self.used)
        if extra:
            raise GuideMismatchError(
                f"the guide has site(s) {extra} which the model does not have as latent sites"
            )


def propose(fn: Optional[Callable] = None, guide_trace: Optional[Trace] = None, strict: bool = True):
    """Handler form of :class:`ProposeMessenger`."""
    if guide_trace is None:
        raise ValueError("propose needs guide_trace: the trace of a batched guide run")
    msngr = ProposeMessenger(guide_trace, strict)
    return msngr(fn) if fn is not None else msngr
