"""Benchmark: bulk ESS per second of the slowest parameter, ppl NUTS vs Pyro NUTS (and NumPyro NUTS).

Models: the registered "logistic_regression" (N=1000, D=25, seeded synthetic data) and
"eight_schools_noncentered". One CPU thread (``torch.set_num_threads(1)``), 500 warmup + 1000
draws by default. ESS/s is reported per second of sampling (after warmup) and per second of the
whole run (warmup, and for ppl the one-off graph recording, included). Writes
``bench/results/mcmc.json``.

    python bench/bench_mcmc.py                      # everything
    python bench/bench_mcmc.py --warmup 200 --draws 300 --skip-pyro   # quick
    python bench/bench_mcmc.py --memory 1024 2048 4096 8192 [--device cuda]   # peak memory vs chains
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Dict, List

import arviz as az
import numpy as np
import torch

from ppl.inference.mcmc import mcmc
from ppl.models import get_model

RESULTS = Path(__file__).parent / "results" / "mcmc.json"


def min_bulk_ess(samples: Dict[str, np.ndarray]) -> float:
    """The smallest bulk ESS over every scalar component of every latent site."""
    idata = az.from_dict(posterior=samples)
    ess = az.ess(idata, method="bulk")
    return float(min(np.min(ess[k].values) for k in ess.data_vars))


def latent_names(name: str) -> List[str]:
    return ["w", "b"] if name.startswith("logistic") else ["mu", "tau", "theta_tilde"]


def run_ppl(name: str, chains: int, warmup: int, draws: int, compile, seed: int = 0, device: str = "cpu") -> dict:
    spec = get_model(name)
    data = spec.data(seed=0)
    t0 = time.perf_counter()
    post = mcmc(spec.model, model_kwargs=data, kernel="nuts", chains=chains, warmup=warmup, draws=draws,
                seed=seed, progress=False, compile=compile, device=device)
    total = time.perf_counter() - t0
    ess = min_bulk_ess({k: post.samples[k].cpu().numpy() for k in latent_names(name)})
    a = post.attrs
    return {"library": "ppl", "compile": str(compile), "device": device, "chains": chains, "min_bulk_ess": ess,
            "sampling_s": a["sampling_s"], "total_s": total, "compile_s": a["compile_s"],
            "ess_per_s": ess / a["sampling_s"], "ess_per_s_total": ess / total,
            "lockstep_efficiency": a["lockstep_efficiency"], "divergences": a["num_divergent"],
            "mean_tree_depth": float(post.sample_stats["tree_depth"].float().mean()),
            "ms_per_batched_leapfrog": 1e3 * a["sampling_s"] / max(a["grad_evals_spent"] / chains, 1)}


def peak_memory(name: str, chains: int, device: str, iters: int = 20) -> float:
    """Peak memory (MiB) of a short NUTS run: the CUDA allocator's peak on a GPU, the process's max RSS on CPU.

    The sampler's own memory: pointwise log-likelihoods (chains x draws x 1000 values, kept on the
    host) are off. On CPU each measurement runs in a fresh subprocess (max RSS never goes down).
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        spec = get_model(name)
        mcmc(spec.model, model_kwargs=spec.data(seed=0), kernel="nuts", chains=chains, warmup=iters, draws=iters,
             seed=0, progress=False, device=device, log_likelihood=False)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    import subprocess
    import sys
    code = (f"import resource, torch; torch.set_num_threads(1)\n"
            f"from ppl.inference.mcmc import mcmc\nfrom ppl.models import get_model\n"
            f"spec = get_model({name!r})\n"
            f"mcmc(spec.model, model_kwargs=spec.data(seed=0), kernel='nuts', chains={chains}, warmup={iters}, "
            f"draws={iters}, seed=0, progress=False, log_likelihood=False)\n"
            f"print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def memory_rows(name: str, chains_list: List[int], device: str) -> List[dict]:
    """Peak memory against the number of chains, with the marginal MiB per chain between successive sizes."""
    rows, prev = [], None
    for c in chains_list:
        mib = peak_memory(name, c, device)
        row = {"model": name, "device": device, "chains": c, "peak_mib": mib}
        if prev is not None:
            row["mib_per_extra_chain"] = (mib - prev[1]) / (c - prev[0])
        rows.append(row)
        prev = (c, mib)
        print(row, flush=True)
    return rows


def run_pyro(name: str, warmup: int, draws: int, jit: bool, seed: int = 0) -> dict:
    import pyro
    from pyro.infer import MCMC, NUTS

    spec = get_model(name)
    data = spec.data(seed=0)
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    kernel = NUTS(spec.model, jit_compile=jit, ignore_jit_warnings=True)
    runner = MCMC(kernel, num_samples=draws, warmup_steps=warmup, num_chains=1, disable_progbar=True)
    t0 = time.perf_counter()
    # Pyro has no hook between warmup and sampling: time both, and attribute sampling time pro rata of
    # the leapfrog steps is not available either, so report the whole run and a sampling-share estimate.
    runner.run(**data)
    total = time.perf_counter() - t0
    samples = {k: v.unsqueeze(0).numpy() for k, v in runner.get_samples().items() if k in latent_names(name)}
    ess = min_bulk_ess(samples)
    sampling = total * draws / (warmup + draws)
    return {"library": "pyro", "jit": jit, "chains": 1, "min_bulk_ess": ess, "total_s": total,
            "sampling_s_estimate": sampling, "ess_per_s": ess / sampling, "ess_per_s_total": ess / total}


def run_numpyro(name: str, chains: int, warmup: int, draws: int, seed: int = 0) -> dict:
    import jax
    import numpyro
    import numpyro.distributions as nd
    from numpyro.infer import MCMC, NUTS

    data = {k: np.asarray(v) for k, v in get_model(name).data(seed=0).items()}
    if name.startswith("logistic"):
        def model(x, y):
            d = x.shape[1]
            w = numpyro.sample("w", nd.Normal(np.zeros(d), 1.0).to_event(1))
            b = numpyro.sample("b", nd.Normal(0.0, 1.0))
            with numpyro.plate("data", x.shape[0]):
                numpyro.sample("y", nd.Bernoulli(logits=x @ w + b), obs=y)
    else:
        def model(y, sigma):
            mu = numpyro.sample("mu", nd.Normal(0.0, 5.0))
            tau = numpyro.sample("tau", nd.HalfCauchy(5.0))
            with numpyro.plate("school", len(y)):
                tt = numpyro.sample("theta_tilde", nd.Normal(0.0, 1.0))
                numpyro.sample("y", nd.Normal(mu + tau * tt, sigma), obs=y)
    method = "sequential" if chains == 1 else "vectorized"
    runner = MCMC(NUTS(model), num_warmup=warmup, num_samples=draws, num_chains=chains,
                  chain_method=method, progress_bar=False)
    t0 = time.perf_counter()
    runner.warmup(jax.random.PRNGKey(seed), **data)
    t1 = time.perf_counter()
    runner.run(jax.random.PRNGKey(seed + 1), **data)
    jax.block_until_ready(runner.get_samples())
    t2 = time.perf_counter()
    samples = {k: np.asarray(v) for k, v in runner.get_samples(group_by_chain=True).items()}
    ess = min_bulk_ess(samples)
    return {"library": "numpyro", "chains": chains, "min_bulk_ess": ess, "sampling_s": t2 - t1,
            "total_s": t2 - t0, "ess_per_s": ess / (t2 - t1), "ess_per_s_total": ess / (t2 - t0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--chains", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--models", nargs="+", default=["logistic_regression", "eight_schools_noncentered"])
    ap.add_argument("--skip-pyro", action="store_true")
    ap.add_argument("--pyro-jit", action="store_true", help="also run Pyro NUTS with jit_compile=True")
    ap.add_argument("--compile", nargs="+", default=["auto", "inductor"],
                    help="ppl compile modes to run (auto = traced graphs; inductor = fused C++ kernels; False = none)")
    ap.add_argument("--skip-numpyro", action="store_true")
    ap.add_argument("--memory", nargs="*", type=int, default=None,
                    help="only measure peak memory of logistic regression at these chain counts (e.g. 1024 4096 8192)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--device", default="cpu", help="device for ppl (e.g. cuda, with --chains 1 64 1024 8192)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.memory is not None:
        rows = memory_rows("logistic_regression", args.memory or [1024, 2048, 4096, 8192], args.device)
        out_path = args.out.with_name(f"mcmc_memory_{args.device.split(':')[0]}.json")
        out_path.write_text(json.dumps({"benchmark": "mcmc_memory", "torch": torch.__version__, "rows": rows}, indent=2))
        return
    try:
        import numpyro  # noqa: F401
        have_numpyro = True
    except ImportError:
        have_numpyro = False
    rows = []
    for name in args.models:
        for chains in args.chains:
            for mode in args.compile:
                mode = False if mode == "False" else mode
                rows.append(dict(model=name, **run_ppl(name, chains, args.warmup, args.draws, mode, device=args.device)))
                print(rows[-1], flush=True)
            if have_numpyro and not args.skip_numpyro:
                rows.append(dict(model=name, **run_numpyro(name, chains, args.warmup, args.draws)))
                print(rows[-1], flush=True)
        if not args.skip_pyro:
            for jit in ([False, True] if args.pyro_jit else [False]):
                rows.append(dict(model=name, **run_pyro(name, args.warmup, args.draws, jit)))
                print(rows[-1], flush=True)
    ratios = {}
    for name in args.models:
        pyro_rows = [r for r in rows if r["model"] == name and r["library"] == "pyro" and not r.get("jit")]
        for r in rows:
            if r["model"] == name and r["library"] == "ppl" and pyro_rows:
                ratios[f"{name}/ppl_{r['chains']}ch_{r['compile']}_vs_pyro_1ch"] = r["ess_per_s"] / pyro_rows[0]["ess_per_s"]
            if r["model"] == name and r["library"] == "numpyro":
                for o in rows:
                    if o["model"] == name and o["library"] == "ppl" and o["chains"] == r["chains"]:
                        ratios[f"{name}/ppl_{o['compile']}_vs_numpyro_{r['chains']}ch"] = o["ess_per_s"] / r["ess_per_s"]
    out = {"benchmark": "mcmc", "warmup": args.warmup, "draws": args.draws, "threads": 1,
           "torch": torch.__version__, "machine": platform.platform(), "numpyro_available": have_numpyro,
           "load_average_at_end": list(__import__("os").getloadavg()), "rows": rows, "ratios": ratios}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
