"""Conversion of a :class:`~ppl.inference.result.Result` to ArviZ InferenceData, and netCDF I/O."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional

import numpy as np
import torch

if TYPE_CHECKING:
    from ppl.inference.result import Result

_WEIGHTED = "weighted_samples"   # extra netCDF group: the particles before resampling
_DIAGNOSTICS = "diagnostics"     # extra group: per-step histories over a "step" dimension


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _dims(result: "Result") -> Dict[str, list]:
    return {k: list(v) for k, v in result.dims.items()}


def _diagnostics_dataset(diagnostics: Dict[str, Any]):
    """Per-step histories as an xarray Dataset over ``step`` (a leading ``chain`` kept if 2-D)."""
    import xarray as xr

    data_vars = {}
    for name, value in diagnostics.items():
        arr = _np(value) if not isinstance(value, (list, tuple)) else np.asarray(value, dtype=float)
        if arr.dtype == object or arr.ndim == 0:
            continue
        dims = [f"{name}_step"] if arr.ndim == 1 else ["chain", f"{name}_step"] + [f"{name}_dim_{i}" for i in range(arr.ndim - 2)]
        data_vars[name] = (dims, arr)
    return xr.Dataset(data_vars) if data_vars else None


def result_to_inference_data(result: "Result"):
    """InferenceData of an unweighted result: posterior, sample_stats, log_likelihood, observed_data."""
    import arviz as az

    if result.weighted:
        raise ValueError("resample a weighted result first (Result.draws)")
    attrs = {k: v for k, v in result.scalar_attrs().items() if v is not None}
    dims = _dims(result)
    idata = az.from_dict(
        posterior={k: _np(v) for k, v in result.samples.items()},
        sample_stats={k: _np(v) for k, v in result.sample_stats.items()} or None,
        log_likelihood={k: _np(v) for k, v in result.log_likelihood.items()} or None,
        observed_data={k: _np(v) for k, v in result.observed_data.items()} or None,
        dims=dims,
    )
    for group in idata.groups():  # from_dict's attrs= is not applied by every ArviZ version
        idata[group].attrs.update(attrs)
    diag = _diagnostics_dataset(result.diagnostics)
    if diag is not None:
        idata.add_groups({_DIAGNOSTICS: diag}, warn_on_custom_groups=False) if _accepts_warn_flag(idata) else idata.add_groups({_DIAGNOSTICS: diag})
    return idata


def _accepts_warn_flag(idata) -> bool:
    import inspect

    return "warn_on_custom_groups" in inspect.signature(idata.add_groups).parameters


def save_result(result: "Result", path: Path) -> Path:
    """netCDF file holding the ArviZ groups, the weighted particles and the scalar attributes."""
    import xarray as xr

    path.parent.mkdir(parents=True, exist_ok=True)
    idata = result.to_arviz()
    if result.weighted:
        chain_draw = ["chain", "draw"]
        data_vars = {}
        for k, v in result.samples.items():
            dims = list(result.dims.get(k, [f"{k}_dim_{i}" for i in range(v.dim() - 2)]))
            data_vars[k] = (chain_draw + dims, _np(v))
        data_vars["log_weights"] = (chain_draw, _np(result.log_weights))
        extra = xr.Dataset(data_vars, attrs={"ppl_result": json.dumps(result.scalar_attrs())})
        if _accepts_warn_flag(idata):
            idata.add_groups({_WEIGHTED: extra}, warn_on_custom_groups=False)
        else:
            idata.add_groups({_WEIGHTED: extra})
    idata.posterior.attrs["ppl_result"] = json.dumps(result.scalar_attrs())
    _netcdf_safe(idata)
    idata.to_netcdf(str(path))
    return path


def write_netcdf(idata, path: Path) -> Path:
    """Write InferenceData to netCDF, with boolean attributes stored as 0 / 1."""
    _netcdf_safe(idata)
    idata.to_netcdf(str(path))
    return path


def _netcdf_safe(idata) -> None:
    """netCDF has no booleans: store boolean attributes as 0 / 1 (the JSON copy keeps the truth)."""
    for group in idata.groups():
        ds = idata[group]
        for key, value in list(ds.attrs.items()):
            if isinstance(value, (bool, np.bool_)):
                ds.attrs[key] = int(value)


def _dataset_to_tensors(ds, skip=()) -> Dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(ds[k].values)) for k in ds.data_vars if k not in skip}


def load_result(path: Path) -> "Result":
    """A :class:`Result` read back from :func:`save_result`'s file."""
    import arviz as az

    from ppl.inference.result import Result

    if not path.exists():
        raise FileNotFoundError(f"no saved result at {path}")
    idata = az.from_netcdf(str(path))
    attrs: Dict[str, Any] = json.loads(idata.posterior.attrs.get("ppl_result", "{}"))
    engine = attrs.pop("engine", "unknown")
    log_evidence = attrs.pop("log_evidence", None)
    log_evidence_se = attrs.pop("log_evidence_se", None)
    attrs.pop("ess", None)
    groups = set(idata.groups())
    log_weights: Optional[torch.Tensor] = None
    if _WEIGHTED in groups:
        ws = idata[_WEIGHTED]
        samples = _dataset_to_tensors(ws, skip=("log_weights",))
        log_weights = torch.as_tensor(np.asarray(ws["log_weights"].values))
        dims = {k: list(ws[k].dims[2:]) for k in samples}
        sample_stats: Dict[str, torch.Tensor] = {}
        log_likelihood: Dict[str, torch.Tensor] = {}
    else:
        samples = _dataset_to_tensors(idata.posterior)
        dims = {k: list(idata.posterior[k].dims[2:]) for k in samples}
        sample_stats = _dataset_to_tensors(idata.sample_stats) if "sample_stats" in groups else {}
        log_likelihood = _dataset_to_tensors(idata.log_likelihood) if "log_likelihood" in groups else {}
    observed = _dataset_to_tensors(idata.observed_data) if "observed_data" in groups else {}
    diagnostics = {k: np.asarray(v.values) for k, v in idata[_DIAGNOSTICS].data_vars.items()} if _DIAGNOSTICS in groups else {}
    return Result(
        engine=engine,
        samples=samples,
        log_weights=log_weights,
        log_evidence=log_evidence,
        log_evidence_se=log_evidence_se,
        sample_stats=sample_stats,
        diagnostics=diagnostics,
        log_likelihood=log_likelihood,
        observed_data=observed,
        dims=dims,
        attrs=attrs,
    )
