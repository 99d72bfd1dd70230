"""Eight posteriordb reference posteriors as Pyro models, registered as ``pdb_<posterior>``.

The models follow posteriordb's Stan programs (stan-dev/posteriordb@28f8d3d6); data and reference
means / sds are read from ``shared/posteriordb`` (see :func:`posteriordb_dir`). Sites keep Stan's
parameter names; a reference name ``beta[1]`` is our site ``beta`` at index 0. Models with Stan's
implicit flat priors (``ImproperUniform`` sites) cannot be sampled from the prior: engines start
them from ``init=`` values or Stan's Uniform(-2, 2) in unconstrained space.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch

from ppl.models.base import GroundTruth, ModelSpec, register_model
from ppl.models.posteriordb._io import (
    ENV_VAR,
    POSTERIORS,
    load_data,
    parse_param,
    posterior_name,
    posteriordb_dir,
    posteriordb_reference,
    reference_ground_truth,
    tensor,
)
from ppl.models.posteriordb._util import flat, linear
from ppl.models.posteriordb.hierarchical import eight_schools_noncentered, gp_pois_regr
from ppl.models.posteriordb.regression import diamonds, earn_height, kidscore_momiq, logmesquite
from ppl.models.posteriordb.timeseries import arK, garch11

__all__ = [
    "ENV_VAR", "POSTERIORS", "posteriordb_dir", "posteriordb_reference", "posterior_name", "parse_param",
    "site_index", "flat", "linear", "IMPROPER_SITES",
    "eight_schools_noncentered", "arK", "earn_height", "kidscore_momiq", "logmesquite", "garch11",
    "gp_pois_regr", "diamonds",
]


def _loader(short: str, convert: Callable[[Dict[str, Any], Optional[torch.dtype]], Dict[str, Any]]):
    def data(seed: int = 0, dtype: Optional[torch.dtype] = None) -> Dict[str, Any]:
        """posteriordb's data set (fixed: ``seed`` is accepted for the registry and ignored)."""
        return convert(load_data(short), dtype)

    data.__name__ = f"{short}_data"
    return data


def _columns(*names: str):
    return lambda d, dtype: {n: tensor(d[n], dtype) for n in names}


# short name -> (model, data converter, our site shapes for the ground truth, tags, description)
_SPECS: Dict[str, Tuple[Callable, Callable, Dict[str, Tuple[int, ...]], tuple, str]] = {
    "eight_schools_noncentered": (
        eight_schools_noncentered, _columns("y", "sigma"),
        {"mu": (), "tau": (), "theta": (8,)}, ("hierarchical",),
        "Eight schools, non-centred (theta_trans ~ N(0, 1), theta = mu + tau theta_trans).",
    ),
    "arK": (
        arK, lambda d, dtype: {"y": tensor(d["y"], dtype), "K": int(d["K"])},
        {"alpha": (), "beta": (5,), "sigma": ()}, ("time-series",),
        "AR(5) on 200 points: alpha, beta ~ N(0, 10), sigma ~ HalfCauchy(2.5).",
    ),
    "earnings_earn_height": (
        earn_height, _columns("earn", "height"),
        {"beta": (2,), "sigma": ()}, ("regression", "flat-prior"),
        "earn ~ N(beta0 + beta1 height, sigma), flat priors, 1192 people (badly scaled).",
    ),
    "kidiq_kidscore_momiq": (
        kidscore_momiq, _columns("kid_score", "mom_iq"),
        {"beta": (2,), "sigma": ()}, ("regression", "flat-prior"),
        "kid_score ~ N(beta0 + beta1 mom_iq, sigma), flat beta, sigma ~ HalfCauchy(2.5), 434 children.",
    ),
    "mesquite_logmesquite": (
        logmesquite,
        _columns("weight", "diam1", "diam2", "canopy_height", "total_height", "density", "group"),
        {"beta": (7,), "sigma": ()}, ("regression", "flat-prior"),
        "log weight ~ N(X beta, sigma) on 6 log predictors + group, flat priors, 46 shrubs.",
    ),
    "garch11": (
        garch11, lambda d, dtype: {"y": tensor(d["y"], dtype), "sigma1": float(d["sigma1"])},
        {"mu": (), "alpha0": (), "alpha1": (), "beta1": ()}, ("time-series", "flat-prior"),
        "GARCH(1,1) on 200 returns, flat priors, 0 < beta1 < 1 - alpha1.",
    ),
    "gp_pois_regr": (
        gp_pois_regr, lambda d, dtype: {"x": tensor(d["x"], dtype), "k": tensor(d["k"], dtype)},
        {"rho": (), "alpha": (), "f": (11,)}, ("gaussian-process",),
        "Poisson regression with a latent squared-exponential GP (non-centred), 11 points.",
    ),
    "diamonds": (
        diamonds, _columns("Y", "X"),
        {"b": (24,), "Intercept": (), "sigma": ()}, ("regression",),
        "brms regression of log price on 24 correlated predictors, 5000 diamonds (hard geometry).",
    ),
}

IMPROPER_SITES: Dict[str, Tuple[str, ...]] = {
    "earnings_earn_height": ("beta", "sigma"),
    "kidiq_kidscore_momiq": ("beta",),
    "mesquite_logmesquite": ("beta", "sigma"),
    "garch11": ("mu", "alpha0", "alpha1", "beta1"),
}
"""Sites with Stan's implicit flat (improper) prior, per model: they need ``init=`` or Stan-style init."""


def site_index(param: str) -> Tuple[str, Tuple[int, ...]]:
    """Our (site, 0-based index) for a posteriordb parameter name: ``"theta[1]"`` -> ``("theta", (0,))``."""
    return parse_param(param)


def _truth(short: str, shapes: Dict[str, Tuple[int, ...]]) -> Callable[[Dict[str, Any]], GroundTruth]:
    def ground_truth(data: Dict[str, Any]) -> GroundTruth:
        """posteriordb's reference means / sds (10,000 Stan draws) for these data."""
        truth = reference_ground_truth(short, shapes)
        truth.extra["improper_sites"] = IMPROPER_SITES.get(short, ())
        return truth

    ground_truth.__name__ = f"{short}_ground_truth"
    return ground_truth


for _short, (_model, _convert, _shapes, _tags, _description) in _SPECS.items():
    register_model(
        ModelSpec(
            name=f"pdb_{_short}",
            model=_model,
            data=_loader(_short, _convert),
            description=f"posteriordb {POSTERIORS[_short]}: {_description}",
            ground_truth=_truth(_short, _shapes),
            tags=("posteriordb", "reference", "continuous") + _tags,
        )
    )
