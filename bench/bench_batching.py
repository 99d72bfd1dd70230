"""Benchmark: verified batching, against the anchors, in one run on one pinned CPU thread.

1. The check's cost: ``Program.verdict`` (3 batched + 3 unbatched runs, data check) against a default
   4-chain NUTS run of eight schools (500 warmup + 1000 draws); goal under 5 %.
2. The vmap path's speed: ppl NUTS with 8 chains on Pyro's ``logistic_regression`` NUTS test model as
   written (``(coefs * data).sum(-1)``: it does not broadcast, so it runs on the vmap path) against
   Pyro's ``MCMC(NUTS(model))`` running the same 8 chains one after another; goal at least 3x, in
   bulk ESS per second of the whole run (warmup included).

Writes ``bench/results/batching.json``.

    python bench/bench_batching.py [--warmup 300 --draws 500]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import torch

from ppl.inference.mcmc import nuts
from ppl.inference.program import Program
from ppl.models import get_model

RESULTS = Path(__file__).parent / "results" / "batching.json"


def pyro_logistic_data(n: int = 1000, d: int = 3):
    """Pyro's tests/infer/mcmc logistic regression: Bernoulli labels from fixed true coefficients."""
    g = torch.Generator().manual_seed(2)
    data = torch.randn(n, d, generator=g)
    true = torch.arange(1.0, d + 1.0)
    labels = torch.bernoulli(torch.sigmoid((true * data).sum(-1)), generator=g)
    return data, labels


def logistic_regression(data, labels):
    """As written in Pyro's NUTS tests: no plate, ``(coefs * data).sum(-1)`` (does not broadcast)."""
    dim = data.shape[1]
    coefs = pyro.sample("beta", dist.Normal(torch.zeros(dim), torch.ones(dim)).to_event(1))
    pyro.sample("y", dist.Bernoulli(logits=(coefs * data).sum(-1)).to_event(1), obs=labels)


def min_ess(draws: np.ndarray) -> float:
    """Smallest bulk ESS over coordinates; draws (chains, draws, D)."""
    return float(min(az.ess(draws[:, :, j]) for j in range(draws.shape[-1])))


def check_cost(warmup: int, draws: int) -> dict:
    spec = get_model("eight_schools_noncentered")
    data = spec.data()
    times = []
    for _ in range(5):
        program = Program(spec.model, (), data)
        t = time.perf_counter()
        program.verdict
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    nuts(spec.model, model_kwargs=data, chains=4, warmup=warmup, draws=draws, seed=0, progress=False)
    run = time.perf_counter() - t
    check = float(np.median(times))
    return {"check_s": check, "nuts_4_chains_s": run, "ratio": check / run, "verdict": program.batching}


def vmap_vs_pyro(warmup: int, draws: int, chains: int = 8) -> dict:
    data, labels = pyro_logistic_data()
    t = time.perf_counter()
    res = nuts(logistic_regression, data, labels, chains=chains, warmup=warmup, draws=draws, seed=0, progress=False)
    ppl_s = time.perf_counter() - t
    ppl_ess = min_ess(res.samples["beta"].double().numpy())

    from pyro.infer import MCMC, NUTS
    pyro.set_rng_seed(0)
    t = time.perf_counter()
    pyro_draws = []
    for c in range(chains):  # Pyro's CPU chains one after another (its own num_chains spawns processes)
        mcmc = MCMC(NUTS(logistic_regression), num_samples=draws, warmup_steps=warmup, disable_progbar=True)
        mcmc.run(data, labels)
        pyro_draws.append(mcmc.get_samples()["beta"].double().numpy())
    pyro_s = time.perf_counter() - t
    pyro_ess = min_ess(np.stack(pyro_draws))
    return {"chains": chains, "batching": res.attrs["batching"],
            "ppl_s": ppl_s, "ppl_min_ess": ppl_ess, "ppl_ess_per_s": ppl_ess / ppl_s,
            "pyro_s": pyro_s, "pyro_min_ess": pyro_ess, "pyro_ess_per_s": pyro_ess / pyro_s,
            "speedup_wall": pyro_s / ppl_s, "speedup_ess_per_s": (ppl_ess / ppl_s) / (pyro_ess / pyro_s),
            "ppl_mean": res.samples["beta"].double().mean((0, 1)).tolist(),
            "pyro_mean": np.stack(pyro_draws).mean((0, 1)).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    out = {"machine": platform.platform(), "torch_threads": 1, "warmup": args.warmup, "draws": args.draws,
           "check_cost": check_cost(args.warmup, args.draws),
           "vmap_vs_pyro": vmap_vs_pyro(args.warmup, args.draws)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
