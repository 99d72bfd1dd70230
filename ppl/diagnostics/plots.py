"""Diagnostic figures made with ArviZ, written as PNG files (headless)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

MAX_VARS = 6  # plotting every element of a large model is slow and unreadable


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _var_names(idata) -> List[str]:
    names = [k for k, v in idata.posterior.data_vars.items() if int(np.prod(v.shape[2:])) <= 16]
    return names[:MAX_VARS] or list(idata.posterior.data_vars)[:1]


def save_plots(idata, out_dir: Path, step_diagnostics: Optional[dict] = None) -> List[Path]:
    """Trace, posterior, rank, ESS and energy plots (those that apply), plus per-step SMC curves."""
    import arviz as az

    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    names = _var_names(idata)
    chains = idata.posterior.sizes["chain"]
    written: List[Path] = []

    def save(fname: str, draw) -> None:
        try:
            draw()
            path = out_dir / fname
            plt.gcf().savefig(path, dpi=80, bbox_inches="tight")
            written.append(path)
        finally:
            plt.close("all")

    save("trace.png", lambda: az.plot_trace(idata, var_names=names, compact=True))
    save("posterior.png", lambda: az.plot_posterior(idata, var_names=names))
    if chains > 1:
        save("rank.png", lambda: az.plot_rank(idata, var_names=names))
        save("ess.png", lambda: az.plot_ess(idata, var_names=names, kind="evolution"))
    if "sample_stats" in idata.groups() and "energy" in idata.sample_stats:
        save("energy.png", lambda: az.plot_energy(idata))
    if step_diagnostics:
        curves = {k: np.asarray(v, dtype=float) for k, v in step_diagnostics.items()
                  if np.ndim(v) == 1 and len(v) > 1 and np.issubdtype(np.asarray(v).dtype, np.number)}
        if curves:
            def draw_steps():
                fig, axes = plt.subplots(len(curves), 1, figsize=(6, 2.2 * len(curves)), squeeze=False)
                for ax, (k, v) in zip(axes[:, 0], curves.items()):
                    ax.plot(np.arange(len(v)), v)
                    ax.set_ylabel(k)
                axes[-1, 0].set_xlabel("step")

            save("steps.png", draw_steps)
    return written
