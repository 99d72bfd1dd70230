"""1-D linear-Gaussian state-space model, the particle-filter benchmark, with its exact Kalman truth.

    x_0 ~ Normal(m0, s0)          (s0 = q / sqrt(1 - a^2), the stationary sd, unless given)
    x_t ~ Normal(a x_{t-1}, q)    for t = 1 .. T-1
    y_t ~ Normal(x_t, r)          for t = 0 .. T-1   (y_0 is observed from x_0)

The same joint is written three ways that must agree exactly: :func:`lgssm` (a whole program, sites
``x_0, y_0, x_1, y_1, ...``), :func:`lgssm_init` + :func:`lgssm_step` (step form for particle filters),
and :func:`kalman_filter` / :func:`kalman_smoother` (exact evidence and marginals, float64).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple, Union

import pyro
import pyro.distributions as dist
import torch

from ppl.models.base import GroundTruth, ModelSpec, register_model

Scalar = Union[float, torch.Tensor]
A, Q, R = 0.9, 1.0, 0.5


def stationary_sd(a: Scalar, q: Scalar) -> Scalar:
    """sd of the AR(1) stationary law, q / sqrt(1 - a^2); an error when |a| >= 1."""
    if bool(torch.as_tensor(a).abs() >= 1):
        raise ValueError(f"lgssm: no stationary initial law for a={float(a)}; pass s0 explicitly")
    return (q**2 / (1 - a**2)) ** 0.5


def _tensors(ref: Optional[torch.Tensor], *values: Scalar) -> Tuple[torch.Tensor, ...]:
    """``values`` as tensors on the dtype/device of ``ref``, else of the first tensor among them."""
    if ref is None:
        ref = next((v for v in values if isinstance(v, torch.Tensor)), torch.tensor(0.0))
    return tuple(torch.as_tensor(v, dtype=ref.dtype, device=ref.device) for v in values)


def lgssm(
    y: torch.Tensor, a: Scalar = A, q: Scalar = Q, r: Scalar = R, m0: Scalar = 0.0, s0: Optional[Scalar] = None
) -> torch.Tensor:
    """The whole program for observations ``y`` of shape (T,); returns the last state x_{T-1}."""
    s0 = stationary_sd(a, q) if s0 is None else s0
    a, q, r, m0, s0 = _tensors(y, a, q, r, m0, s0)
    x = pyro.sample("x_0", dist.Normal(m0, s0))
    pyro.sample("y_0", dist.Normal(x, r), obs=y[0])
    for t in range(1, y.shape[0]):
        x = pyro.sample(f"x_{t}", dist.Normal(a * x, q))
        pyro.sample(f"y_{t}", dist.Normal(x, r), obs=y[t])
    return x


def lgssm_init(
    a: Scalar = A, q: Scalar = Q, r: Scalar = R, m0: Scalar = 0.0, s0: Optional[Scalar] = None
) -> Dict[str, torch.Tensor]:
    """Step form, time 0 (before y_0): samples "x_0" and returns the state ``{"x": x_0}``.

    Pass tensor parameters (e.g. ``m0``) to choose the dtype/device; floats give the default ones.
    """
    s0 = stationary_sd(a, q) if s0 is None else s0
    m0, s0 = _tensors(None, m0, s0)
    return {"x": pyro.sample("x_0", dist.Normal(m0, s0))}


def lgssm_step(
    state: Dict[str, torch.Tensor], t: int, y_t: torch.Tensor, a: Scalar = A, q: Scalar = Q, r: Scalar = R
) -> Dict[str, torch.Tensor]:
    """Step form, time t: samples "x_t" ~ Normal(a x_{t-1}, q) (not at t=0: x_0 came from init), observes "y_t".

    A filter runs ``state = lgssm_init(); for t, y_t in enumerate(y): state = lgssm_step(state, t, y_t)``,
    which is exactly :func:`lgssm`'s joint with the same site names.
    """
    x = state["x"]
    a, q, r = _tensors(x, a, q, r)
    if t > 0:
        x = pyro.sample(f"x_{t}", dist.Normal(a * x, q))
    pyro.sample(f"y_{t}", dist.Normal(x, r), obs=torch.as_tensor(y_t, dtype=x.dtype, device=x.device))
    return {"x": x}


def simulate(
    T: int = 100, seed: int = 0, a: float = A, q: float = Q, r: float = R, m0: float = 0.0, s0: Optional[float] = None
) -> Dict[str, torch.Tensor]:
    """Seeded draw of observations ``{"y": (T,)}`` from the model."""
    s0 = stationary_sd(a, q) if s0 is None else s0
    g = torch.Generator().manual_seed(seed)
    eps_x = torch.randn(T, generator=g, dtype=torch.float64)
    eps_y = torch.randn(T, generator=g, dtype=torch.float64)
    x = torch.empty(T, dtype=torch.float64)
    x[0] = m0 + s0 * eps_x[0]
    for t in range(1, T):
        x[t] = a * x[t - 1] + q * eps_x[t]
    return {"y": (x + r * eps_y).to(torch.get_default_dtype())}


def _f64(*values: Scalar) -> Tuple[float, ...]:
    return tuple(float(v) for v in values)


def _filter(y: torch.Tensor, a: float, q: float, r: float, m0: float, s0: float):
    """Forward pass: log evidence, filtered and one-step predicted means/variances (float64)."""
    y = torch.as_tensor(y, dtype=torch.float64).cpu()
    T = y.shape[0]
    fm, fv, pm, pv = (torch.empty(T, dtype=torch.float64) for _ in range(4))
    log_z = 0.0
    m_pred, v_pred = m0, s0**2
    for t in range(T):
        pm[t], pv[t] = m_pred, v_pred
        s = v_pred + r**2
        resid = float(y[t]) - m_pred
        log_z += -0.5 * (math.log(2 * math.pi * s) + resid**2 / s)
        k = v_pred / s
        m, v = m_pred + k * resid, (1 - k) * v_pred
        fm[t], fv[t] = m, v
        m_pred, v_pred = a * m, a**2 * v + q**2
    return log_z, fm, fv, pm, pv


def kalman_filter(
    y: torch.Tensor, a: Scalar = A, q: Scalar = Q, r: Scalar = R, m0: Scalar = 0.0, s0: Optional[Scalar] = None
) -> Tuple[float, torch.Tensor, torch.Tensor]:
    """Exact ``(log p(y), E[x_t | y_0..t], Var[x_t | y_0..t])`` in float64, each of the last two of shape (T,)."""
    s0 = stationary_sd(a, q) if s0 is None else s0
    log_z, fm, fv, _, _ = _filter(y, *_f64(a, q, r, m0, s0))
    return log_z, fm, fv


def kalman_smoother(
    y: torch.Tensor, a: Scalar = A, q: Scalar = Q, r: Scalar = R, m0: Scalar = 0.0, s0: Optional[Scalar] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact ``(E[x_t | y], Var[x_t | y])`` (Rauch-Tung-Striebel), float64, shape (T,) each."""
    s0 = stationary_sd(a, q) if s0 is None else s0
    a, q, r, m0, s0 = _f64(a, q, r, m0, s0)
    _, fm, fv, pm, pv = _filter(y, a, q, r, m0, s0)
    sm, sv = fm.clone(), fv.clone()
    for t in range(fm.shape[0] - 2, -1, -1):
        gain = fv[t] * a / pv[t + 1]
        sm[t] = fm[t] + gain * (sm[t + 1] - pm[t + 1])
        sv[t] = fv[t] + gain**2 * (sv[t + 1] - pv[t + 1])
    return sm, sv


def data(seed: int = 0, T: int = 100, a: float = A, q: float = Q, r: float = R) -> Dict[str, Any]:
    """Keyword arguments of :func:`lgssm`: simulated ``y`` (T,) and the parameters as 0-d tensors."""
    out = simulate(T=T, seed=seed, a=a, q=q, r=r)
    out.update(a=torch.tensor(a), q=torch.tensor(q), r=torch.tensor(r))
    return out


def short_data(seed: int = 0, T: int = 10, a: float = A, q: float = Q, r: float = R) -> Dict[str, Any]:
    """As :func:`data` with T=10, for fast tests."""
    return data(seed=seed, T=T, a=a, q=q, r=r)


def ground_truth(d: Dict[str, Any]) -> GroundTruth:
    """Kalman log evidence, RTS smoothing marginals of each ``x_t`` (0-d tensors), and filter moments in ``extra``."""
    params = {k: d[k] for k in ("a", "q", "r", "m0", "s0") if k in d}
    log_z, fm, fv = kalman_filter(d["y"], **params)
    sm, sv = kalman_smoother(d["y"], **params)
    T = sm.shape[0]
    return GroundTruth(
        posterior_mean={f"x_{t}": sm[t].clone() for t in range(T)},
        posterior_sd={f"x_{t}": sv[t].sqrt() for t in range(T)},
        log_evidence=log_z,
        exact=True,
        extra={"filter_means": fm, "filter_vars": fv, "smoother_means": sm, "smoother_vars": sv},
    )


register_model(
    ModelSpec(
        name="lgssm",
        model=lgssm,
        data=data,
        description="1-D linear-Gaussian state-space model, a=0.9, q=1, r=0.5, T=100; Kalman ground truth.",
        ground_truth=ground_truth,
        tags=("state_space", "sequential", "continuous", "exact"),
    )
)

register_model(
    ModelSpec(
        name="lgssm_short",
        model=lgssm,
        data=short_data,
        description="1-D linear-Gaussian state-space model with T=10, for fast tests; Kalman ground truth.",
        ground_truth=ground_truth,
        tags=("state_space", "sequential", "continuous", "exact", "small"),
    )
)
