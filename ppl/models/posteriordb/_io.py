"""Finding, loading and translating the posteriordb reference files under ``shared/posteriordb``.

posteriordb names parameters 1-based (``beta[2]``); our sites are tensors indexed 0-based, so
``beta[2]`` is ``("beta", (1,))``. Reference numbers are means / sds over 10,000 Stan draws.
"""
from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

import torch

from ppl.models.base import GroundTruth

ENV_VAR = "PPL_POSTERIORDB"
"""Environment variable naming the ``posteriordb`` folder (it wins over the upward search)."""

# our short name -> posteriordb posterior name (folder name)
POSTERIORS = {
    "eight_schools_noncentered": "eight_schools-eight_schools_noncentered",
    "arK": "arK-arK",
    "earnings_earn_height": "earnings-earn_height",
    "kidiq_kidscore_momiq": "kidiq-kidscore_momiq",
    "mesquite_logmesquite": "mesquite-logmesquite",
    "garch11": "garch-garch11",
    "gp_pois_regr": "gp_pois_regr-gp_pois_regr",
    "diamonds": "diamonds-diamonds",
}

_PARAM = re.compile(r"^(?P<site>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<index>[0-9, ]+)\])?$")


def posteriordb_dir() -> Path:
    """The ``posteriordb`` data folder: ``$PPL_POSTERIORDB``, else ``shared/posteriordb`` in an ancestor.

    The search starts at this package and walks up, so it finds both ``<repo>/shared`` and the
    CI layout where ``shared/`` is a sibling of the repository root.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            return path
        raise FileNotFoundError(f"${ENV_VAR} is set to {env!r}, which is not a directory")
    here = Path(__file__).resolve().parent
    for ancestor in (here, *here.parents):
        candidate = ancestor / "shared" / "posteriordb"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"posteriordb data not found: no 'shared/posteriordb' folder in any ancestor of {here} "
        f"(the CI layout puts shared/ next to the repository root), and ${ENV_VAR} is not set; "
        f"set ${ENV_VAR} to the folder holding e.g. 'arK-arK/data.json'"
    )


def posterior_name(name: str) -> str:
    """posteriordb's posterior name for ``name`` (``pdb_arK``, ``arK`` or ``arK-arK``)."""
    short = name[4:] if name.startswith("pdb_") else name
    if short in POSTERIORS:
        return POSTERIORS[short]
    if short in POSTERIORS.values():
        return short
    known = ", ".join(f"pdb_{k}" for k in POSTERIORS)
    raise KeyError(f"unknown posteriordb posterior {name!r}; known: {known}")


def _read(name: str, file: str) -> Dict[str, Any]:
    path = posteriordb_dir() / posterior_name(name) / file
    if not path.is_file():
        raise FileNotFoundError(f"posteriordb file {path} is missing")
    with open(path) as f:
        return json.load(f)


@lru_cache(maxsize=None)
def _load_json(name: str, file: str) -> str:
    return json.dumps(_read(name, file))  # cached as text so callers cannot mutate the cache


def load_data(name: str) -> Dict[str, Any]:
    """The posterior's ``data.json`` as plain Python values."""
    return json.loads(_load_json(posterior_name(name), "data.json"))


def posteriordb_reference(name: str) -> Dict[str, Tuple[float, float]]:
    """Reference ``{param name: (mean, sd)}`` with posteriordb's 1-based names (e.g. ``"beta[1]"``).

    ``name`` may be our registry name (``pdb_arK``), its short form (``arK``) or posteriordb's
    posterior name (``arK-arK``).
    """
    params = json.loads(_load_json(posterior_name(name), "reference.json"))["params"]
    return {k: (float(v["mean"]), float(v["sd"])) for k, v in params.items()}


def reference_num_draws(name: str) -> int:
    return int(json.loads(_load_json(posterior_name(name), "reference.json"))["num_draws"])


def parse_param(param: str) -> Tuple[str, Tuple[int, ...]]:
    """``"beta[2]"`` -> ``("beta", (1,))``; ``"sigma"`` -> ``("sigma", ())`` (1-based to 0-based)."""
    m = _PARAM.match(param)
    if m is None:
        raise ValueError(f"cannot parse posteriordb parameter name {param!r}")
    index = m.group("index")
    return m.group("site"), tuple(int(i) - 1 for i in index.split(",")) if index else ()


def tensor(values: Iterable, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Data as a floating tensor (default dtype unless ``dtype`` is given)."""
    return torch.tensor(values, dtype=dtype or torch.get_default_dtype())


def reference_ground_truth(name: str, shapes: Dict[str, Tuple[int, ...]], rename: Optional[Dict[str, str]] = None) -> GroundTruth:
    """posteriordb's reference means / sds as a :class:`GroundTruth` keyed by our site names.

    ``shapes`` gives each of our sites' shape (one draw); ``rename`` maps posteriordb parameter
    base names to site names where they differ. Parameters with no site are ignored.
    """
    rename = rename or {}
    mean = {s: torch.full(shape, float("nan"), dtype=torch.float64) for s, shape in shapes.items()}
    sd = {s: torch.full(shape, float("nan"), dtype=torch.float64) for s, shape in shapes.items()}
    for param, (m, s) in posteriordb_reference(name).items():
        base, index = parse_param(param)
        site = rename.get(base, base)
        if site not in shapes:
            continue
        mean[site][index] = m
        sd[site][index] = s
    missing = [s for s, v in mean.items() if torch.isnan(v).any()]
    if missing:
        raise ValueError(f"reference of {posterior_name(name)!r} lacks values for site(s) {missing}")
    return GroundTruth(
        posterior_mean=mean,
        posterior_sd=sd,
        exact=False,
        extra={
            "source": f"posteriordb {posterior_name(name)} reference draws (stan-dev/posteriordb@28f8d3d6)",
            "reference_num_draws": reference_num_draws(name),
        },
    )
