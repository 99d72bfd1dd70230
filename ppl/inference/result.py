"""The one result type every engine returns, with conversion to ArviZ and netCDF save / load.

Samples are named, in constrained space, laid out ``(chain, draw, *shape)``. Weighted methods
(importance sampling, SMC) store their particles as one chain with ``log_weights`` of shape
``(1, N)``; ``to_arviz`` resamples them to equally weighted draws for the ``posterior`` group and
keeps the weights, the source particle of each draw and log Z in ``sample_stats`` / ``attrs``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch

ArrayDict = Dict[str, torch.Tensor]


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


@dataclass
class Result:
    """What an engine returns.

    samples: site name -> tensor ``(chain, draw, *shape)``, constrained space.
    log_weights: ``(chain, draw)`` unnormalised log weights, or None for unweighted draws.
    log_evidence / log_evidence_se: log Z estimate and its Monte Carlo standard error.
    sample_stats: per-draw statistics ``(chain, draw)`` named as ArviZ expects (``lp``,
        ``acceptance_rate``, ``step_size``, ``tree_depth``, ``n_steps``, ``diverging``, ``energy``).
    diagnostics: per-step histories (ESS, temperatures, resampling events...), each a 1-D
        array over steps or ``(chain, step)``.
    log_likelihood: observed site -> pointwise log-likelihood ``(chain, draw, *obs shape)``.
    observed_data: observed site -> value.  dims: site -> names of its dimensions.
    attrs: scalars worth keeping (runtime, settings, bounds such as ``elbo``).
    """

    engine: str
    samples: ArrayDict
    log_weights: Optional[torch.Tensor] = None
    log_evidence: Optional[float] = None
    log_evidence_se: Optional[float] = None
    sample_stats: ArrayDict = field(default_factory=dict)
    diagnostics: Dict[str, Any] = field(default_factory=dict)
    log_likelihood: ArrayDict = field(default_factory=dict)
    observed_data: ArrayDict = field(default_factory=dict)
    dims: Dict[str, Sequence[str]] = field(default_factory=dict)
    attrs: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in self.samples.items():
            if value.dim() < 2:
                raise ValueError(f"sample {name!r} must have shape (chain, draw, ...), got {tuple(value.shape)}")
        if self.log_weights is not None and self.log_weights.dim() != 2:
            raise ValueError(f"log_weights must have shape (chain, draw), got {tuple(self.log_weights.shape)}")

    # ------------------------------------------------------------------------- shape facts
    @property
    def num_chains(self) -> int:
        return next(iter(self.samples.values())).shape[0]

    @property
    def num_draws(self) -> int:
        return next(iter(self.samples.values())).shape[1]

    @property
    def weighted(self) -> bool:
        return self.log_weights is not None

    def normalized_weights(self) -> torch.Tensor:
        """Normalised weights over all (chain, draw) pairs, shape ``(chain, draw)``."""
        if self.log_weights is None:
            n = self.num_chains * self.num_draws
            return torch.full((self.num_chains, self.num_draws), 1.0 / n)
        lw = self.log_weights.flatten()
        return torch.softmax(lw.double(), 0).reshape(self.log_weights.shape)

    @property
    def ess(self) -> float:
        """Kish effective sample size of the weights (number of draws when unweighted)."""
        w = self.normalized_weights().flatten()
        return float(1.0 / (w**2).sum())

    # ------------------------------------------------------------------------- summaries
    def mean(self, name: str) -> torch.Tensor:
        """Posterior mean of a site (weighted when the result is weighted)."""
        x = self.samples[name].double()
        w = self.normalized_weights().to(x.device).reshape(x.shape[:2] + (1,) * (x.dim() - 2))
        return (w * x).sum((0, 1))

    def sd(self, name: str) -> torch.Tensor:
        """Posterior standard deviation of a site (weighted when the result is weighted)."""
        x = self.samples[name].double()
        w = self.normalized_weights().to(x.device).reshape(x.shape[:2] + (1,) * (x.dim() - 2))
        m = (w * x).sum((0, 1))
        return ((w * (x - m) ** 2).sum((0, 1))).sqrt()

    def draws(self, num_draws: Optional[int] = None, seed: int = 0) -> "Result":
        """Equally weighted draws: this result if unweighted, else a systematic resample of it."""
        if not self.weighted:
            return self
        from ppl.inference.resampling import systematic

        n = self.num_chains * self.num_draws
        m = num_draws or n
        gen = torch.Generator(device=self.log_weights.device).manual_seed(seed)
        idx = systematic(self.log_weights.flatten(), m, generator=gen)
        idx = idx[torch.randperm(m, generator=gen, device=idx.device)]  # no sorted-order artefacts

        def pick(x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape((n,) + tuple(x.shape[2:]))
            return flat[idx.to(flat.device)].reshape((1, m) + tuple(x.shape[2:]))

        lw_norm = (self.log_weights.flatten() - torch.logsumexp(self.log_weights.flatten(), 0))
        stats = {k: pick(v) for k, v in self.sample_stats.items() if v.shape[:2] == self.log_weights.shape}
        stats["log_weight"] = pick(lw_norm.reshape(self.log_weights.shape))
        stats["particle"] = idx.reshape(1, m)
        return Result(
            engine=self.engine,
            samples={k: pick(v) for k, v in self.samples.items()},
            log_weights=None,
            log_evidence=self.log_evidence,
            log_evidence_se=self.log_evidence_se,
            sample_stats=stats,
            diagnostics=self.diagnostics,
            log_likelihood={k: pick(v) for k, v in self.log_likelihood.items()},
            observed_data=self.observed_data,
            dims=self.dims,
            attrs=dict(self.attrs, resampled_from=n, ess=self.ess),
        )

    # ------------------------------------------------------------------------- ArviZ
    def to_arviz(self, num_draws: Optional[int] = None, seed: int = 0):
        """``arviz.InferenceData`` with posterior, sample_stats, log_likelihood, observed_data.

        Weighted results are resampled to equally weighted draws first (see :meth:`draws`);
        log Z, its standard error and the ESS go into ``attrs``; per-step diagnostics into a
        ``diagnostics`` group over a ``step`` dimension.
        """
        from ppl.diagnostics.arviz import result_to_inference_data

        return result_to_inference_data(self.draws(num_draws, seed))

    def summary(self, **kwargs):
        """``arviz.summary`` of the (resampled) draws."""
        import arviz as az

        return az.summary(self.to_arviz(), **kwargs)

    def scalar_attrs(self) -> Dict[str, Any]:
        """Engine, log Z and the other scalar facts, JSON-serialisable."""
        out: Dict[str, Any] = {"engine": self.engine}
        if self.log_evidence is not None:
            out["log_evidence"] = float(self.log_evidence)
        if self.log_evidence_se is not None:
            out["log_evidence_se"] = float(self.log_evidence_se)
        if self.weighted:
            out["ess"] = self.ess
        for k, v in self.attrs.items():
            if isinstance(v, (bool, int, float, str)) or v is None:
                out[k] = v
            elif isinstance(v, torch.Tensor) and v.numel() == 1:
                out[k] = v.item()
        return out

    # ------------------------------------------------------------------------- save / load
    def save(self, path: Union[str, Path]) -> Path:
        """Write the result to a netCDF file (ArviZ groups plus the weighted particles)."""
        from ppl.diagnostics.arviz import save_result

        return save_result(self, Path(path))

    @staticmethod
    def load(path: Union[str, Path]) -> "Result":
        """Read a result written by :meth:`save`."""
        from ppl.diagnostics.arviz import load_result

        return load_result(Path(path))

    def __repr__(self) -> str:
        parts = [f"engine={self.engine!r}", f"chains={self.num_chains}", f"draws={self.num_draws}"]
        if self.weighted:
            parts.append(f"ess={self.ess:.1f}")
        if self.log_evidence is not None:
            se = f" ± {self.log_evidence_se:.4g}" if self.log_evidence_se is not None else ""
            parts.append(f"log_evidence={self.log_evidence:.6g}{se}")
        parts.append("sites=" + ",".join(self.samples))
        return "Result(" + ", ".join(parts) + ")"


def log_mean_exp_with_se(log_w: torch.Tensor) -> tuple[float, float]:
    """log of the mean of exp(log_w) and the delta-method standard error of that log.

    For i.i.d. importance weights w_i, log Z = log mean(w) and se(log Z) = sd(w) / (sqrt(N) mean(w)),
    computed after subtracting the maximum so nothing overflows.
    """
    lw = log_w.detach().double().flatten()
    n = lw.numel()
    finite = torch.isfinite(lw)
    if not bool(finite.any()):
        return -math.inf, math.inf
    m = lw[finite].max()
    w = torch.exp(lw - m)
    mean = w.mean()
    log_z = float(torch.log(mean) + m)
    se = float(w.std(unbiased=True) / (math.sqrt(n) * mean)) if n > 1 else math.inf
    return log_z, se


def to_json_safe(obj: Any) -> Any:
    """Plain-JSON form of numbers, tensors and arrays (NaN / inf as strings)."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return to_json_safe(_np(obj).tolist())
    if isinstance(obj, dict):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, (np.floating, np.integer)):
        return to_json_safe(obj.item())
    return obj


def dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(to_json_safe(dict(obj)), indent=2)
