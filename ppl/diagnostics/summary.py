"""Per-parameter-element summaries (mean, sd, ESS, R-hat) named as ArviZ names them."""
from __future__ import annotations

import itertools
import math
from typing import Any, Dict

import numpy as np

from ppl.inference.result import Result


def element_names(name: str, shape) -> list:
    """ArviZ's names for the elements of a site: ``mu``, ``theta[0]``, ``L[1, 2]``."""
    if len(shape) == 0:
        return [name]
    return [f"{name}[{', '.join(map(str, idx))}]" for idx in itertools.product(*map(range, shape))]


def summarize(result: Result) -> Dict[str, Dict[str, Any]]:
    """Mapping from each parameter element to its mean / sd and, where meaningful, ess_bulk / r_hat.

    Weighted results (importance sampling, SMC) report the weighted mean and sd and the Kish ESS
    of the weights; MCMC and other draw-based results use ``arviz.summary`` (bulk ESS, R-hat).
    """
    if result.weighted:
        w = result.normalized_weights().flatten().double()
        ess = result.ess
        out: Dict[str, Dict[str, Any]] = {}
        for name, x in result.samples.items():
            flat = x.reshape((-1,) + tuple(x.shape[2:])).double()
            flat = flat.reshape(flat.shape[0], -1)
            mean = (w[:, None] * flat).sum(0)
            sd = (w[:, None] * (flat - mean) ** 2).sum(0).sqrt()
            for i, el in enumerate(element_names(name, x.shape[2:])):
                out[el] = {"mean": float(mean[i]), "sd": float(sd[i]), "ess": ess}
        return out
    import arviz as az

    idata = result.to_arviz()
    table = az.summary(idata, kind="all" if result.num_chains > 1 else "stats", round_to="none")
    if result.num_chains == 1:
        ess = az.ess(idata, method="bulk")
        bulk = {k: np.atleast_1d(ess[k].values).ravel() for k in ess.data_vars}
    out = {}
    for row, values in table.iterrows():
        entry = {"mean": float(values["mean"]), "sd": float(values["sd"])}
        if "ess_bulk" in values:
            entry["ess_bulk"] = float(values["ess_bulk"])
            entry["r_hat"] = float(values["r_hat"]) if math.isfinite(values["r_hat"]) else None
        out[str(row)] = entry
    if result.num_chains == 1:
        for name, x in result.samples.items():
            for el, e in zip(element_names(name, x.shape[2:]), bulk.get(name, [])):
                if el in out:
                    out[el]["ess_bulk"] = float(e)
    return out
