"""Particle-filter throughput on the 1-D LGSSM: ours vs Pyro's SMCFilter, `particles`, a hand-written torch filter.

Model: x_t = 0.9 x_{t-1} + N(0, 1), y_t = x_t + N(0, 0.5^2), T = 100 (x_0 stationary). Reports
particle-steps per second (N * T / seconds) for N = 1e3 .. 1e6 (1e7 with --big), one torch thread,
and writes bench/results/smc.json. `particles` needs numpy < 2, which the project's venv cannot
have; give ``--particles-python PATH`` (a python with `particles` installed) to time it in a
subprocess, or it is skipped. On a CUDA machine ``--device cuda`` times ours and the hand-written
filter on the GPU.

    python bench/bench_smc.py [--big] [--device cuda] [--cpu-time] [--particles-python /tmp/pvenv/bin/python]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

A, Q, R, T = 0.9, 1.0, 0.5, 100
S0 = Q / math.sqrt(1 - A * A)
BUDGET_S = 60.0  # stop growing N for a method once one run takes longer than this
# --cpu-time: time with this process's CPU time (time.process_time), which approximates an idle
# core on a shared, loaded machine (wall-clock rates there swing by 2x between runs); CPU only.
CLOCK = time.process_time if os.environ.get("PPL_BENCH_CPU_TIME") == "1" else time.perf_counter


def data():
    from ppl.models.lgssm import simulate

    return simulate(T, seed=0)["y"].double()


# ----------------------------------------------------------------------------------------- methods
def ours_fk(y, n, device, dtype):
    """Our driver on a plain-torch Feynman–Kac model (the fast path)."""
    import torch

    from ppl.inference.smc import FKModel, run_smc

    y = y.to(device=device, dtype=dtype)
    c = -math.log(R) - 0.5 * math.log(2 * math.pi)

    def M0(k):
        return {"x": S0 * torch.randn(k, dtype=dtype, device=device)}

    def M(t, xp):
        return {"x": torch.randn_like(xp["x"]).mul_(Q).add_(xp["x"], alpha=A)}

    def logG(t, xp, x):
        z = (x["x"] - y[t]) * (1.0 / R)
        return c - 0.5 * z * z

    out = run_smc(FKModel(T, M0, M, logG), n, seed=0, keep_history=False, device=device)
    return float(out.log_evidence[0])


def ours_pyro(y, n, device, dtype):
    """Our particle filter on the step-form Pyro programs lgssm_init / lgssm_step."""
    import torch

    from ppl.inference.smc import StateSpaceFK, run_smc
    from ppl.models.lgssm import lgssm_init, lgssm_step

    fk = StateSpaceFK(lgssm_init, lgssm_step, y.to(device=device, dtype=dtype),
                      init_kwargs={"m0": torch.tensor(0.0, dtype=dtype, device=device)}, device=device)
    out = run_smc(fk, n, seed=0, keep_history=False, device=device)
    return float(out.log_evidence[0])


def hand_torch(y, n, device, dtype):
    """A hand-written torch bootstrap filter (ESS-triggered systematic resampling via searchsorted)."""
    import torch

    torch.manual_seed(0)
    y = y.to(device=device, dtype=dtype)
    c = -math.log(R) - 0.5 * math.log(2 * math.pi)
    x = S0 * torch.randn(n, dtype=dtype, device=device)
    lw = torch.zeros(n, dtype=dtype, device=device)
    log_z = 0.0
    for t in range(T):
        if t > 0:
            w = torch.softmax(lw, 0)
            if float(1.0 / (w * w).sum()) < 0.5 * n:
                u = (torch.rand(1, dtype=dtype, device=device) + torch.arange(n, dtype=dtype, device=device)) / n
                idx = torch.searchsorted(torch.cumsum(w, 0), u).clamp_(max=n - 1)
                x = x[idx]
                lw = torch.zeros_like(lw)
            else:
                lw = torch.log(w)
            x = A * x + Q * torch.randn_like(x)
        lw_new = (torch.log_softmax(lw, 0) if t > 0 else lw - math.log(n)) + c - 0.5 * ((x - y[t]) / R) ** 2
        inc = torch.logsumexp(lw_new, 0)
        log_z += float(inc)
        lw = lw_new - inc
    return log_z


def pyro_smcfilter(y, n, device, dtype):
    """Pyro's SMCFilter (state-space models only; normalises weights each step)."""
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer import SMCFilter

    y = y.to(dtype=dtype)

    class Model:
        def init(self, state):
            state["x"] = pyro.sample("x_init", dist.Normal(torch.tensor(0.0, dtype=dtype), S0))

        def step(self, state, y_t, first):
            if not first:
                state["x"] = pyro.sample("x", dist.Normal(A * state["x"], Q))
            pyro.sample("obs", dist.Normal(state["x"], R), obs=y_t)

    class Guide:  # the bootstrap proposal; a guide may read the state but not write it
        def init(self, state):
            pyro.sample("x_init", dist.Normal(torch.tensor(0.0, dtype=dtype), S0))

        def step(self, state, y_t, first):
            if not first:
                pyro.sample("x", dist.Normal(A * state["x"], Q))

    pyro.set_rng_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # SMCFilter keeps its weights in the default dtype (float32 fails at large N)
    try:
        f = SMCFilter(Model(), Guide(), num_particles=n, max_plate_nesting=0, ess_threshold=0.5)
        f.init()
        for t in range(T):
            f.step(y[t], t == 0)
    finally:
        torch.set_default_dtype(old)
    return None  # SMCFilter keeps no log-evidence estimate


def particles_lib(y, n, device=None, dtype=None):
    """Chopin's `particles` (NumPy) bootstrap filter, systematic resampling, ESS threshold 0.5."""
    import numpy as np
    import particles
    from particles import distributions as dists
    from particles import state_space_models as ssm

    class LGSSM(ssm.StateSpaceModel):
        def PX0(self):
            return dists.Normal(scale=S0)

        def PX(self, t, xp):
            return dists.Normal(loc=A * xp, scale=Q)

        def PY(self, t, xp, x):
            return dists.Normal(loc=x, scale=R)

    np.random.seed(0)
    alg = particles.SMC(fk=ssm.Bootstrap(ssm=LGSSM(), data=np.asarray(y, dtype=np.float64)), N=n,
                        resampling="systematic", ESSrmin=0.5, store_history=False, collect=None)
    alg.run()
    return float(alg.logLt)


METHODS = {
    "ours_fk": ours_fk, "ours_pyro_step": ours_pyro, "hand_torch": hand_torch,
    "pyro_smcfilter": pyro_smcfilter, "particles": particles_lib,
}


def time_one(fn, y, n, device, dtype, repeats):
    best, value = math.inf, None
    for _ in range(repeats):
        t0 = CLOCK()
        value = fn(y, n, device, dtype)
        if device == "cuda":
            import torch

            torch.cuda.synchronize()
        best = min(best, CLOCK() - t0)
    return best, value


def run_method(name, y, sizes, device, dtype):
    rows = []
    for n in sizes:
        repeats = 3 if n <= 10**5 else 1
        try:
            secs, lz = time_one(METHODS[name], y, n, device, dtype, repeats)
        except Exception as e:  # a competitor failing at some size is a result, not a crash
            rows.append({"method": name, "N": n, "device": device, "dtype": str(dtype), "error": f"{type(e).__name__}: {e}"[:300]})
            break
        rows.append({"method": name, "N": n, "device": device, "dtype": str(dtype), "seconds": secs,
                     "particle_steps_per_s": n * T / secs, "log_evidence": lz})
        print(f"{name:16s} {str(dtype):14s} N={n:>9d} {secs:8.3f}s {n * T / secs:12.4g} particle-steps/s", flush=True)
        if secs > BUDGET_S:
            break
    return rows


def particles_subprocess(python, sizes):
    """Time `particles` in another interpreter (it needs numpy < 2)."""
    cmd = [python, __file__, "--only-particles", ",".join(str(n) for n in sizes)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except Exception as e:
        return [{"method": "particles", "error": f"{type(e).__name__}: {e}"[:300]}]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--big", action="store_true", help="also N = 1e7")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--particles-python", default=None, help="python with the `particles` library (numpy < 2)")
    ap.add_argument("--only-particles", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "smc.json"))
    ap.add_argument("--cpu-time", action="store_true", help="time with process CPU time (shared CPU machines)")
    args = ap.parse_args()
    if args.cpu_time:
        global CLOCK
        if args.device != "cpu":
            raise SystemExit("--cpu-time only makes sense with --device cpu")
        CLOCK = time.process_time
        os.environ["PPL_BENCH_CPU_TIME"] = "1"  # the `particles` child process times the same way
    if args.only_particles:  # child mode: plain numpy, no torch needed
        import numpy as np

        rng = np.random.default_rng(0)
        x = S0 * rng.standard_normal()
        ys = []
        for _ in range(T):
            ys.append(x + R * rng.standard_normal())
            x = A * x + Q * rng.standard_normal()
        rows = []
        for n in (int(s) for s in args.only_particles.split(",")):
            secs, lz = time_one(particles_lib, ys, n, "cpu", None, 3 if n <= 10**5 else 1)
            rows.append({"method": "particles", "N": n, "device": "cpu", "dtype": "float64", "seconds": secs,
                         "particle_steps_per_s": n * T / secs, "log_evidence": lz})
            if secs > BUDGET_S:
                break
        print(json.dumps(rows))
        return

    import torch

    torch.set_num_threads(1)
    from ppl.models.lgssm import kalman_filter

    y = data()
    sizes = [10**3, 10**4, 10**5, 10**6] + ([10**7] if args.big else [])
    rows = []
    dev = args.device
    for name, dtypes in (("ours_fk", (torch.float64, torch.float32)), ("hand_torch", (torch.float64, torch.float32)),
                         ("ours_pyro_step", (torch.float64,)), ("pyro_smcfilter", (torch.float64,))):
        for dt in dtypes:
            rows += run_method(name, y, sizes, "cpu" if name == "pyro_smcfilter" else dev, dt)
    try:
        import particles  # noqa: F401

        rows += run_method("particles", y.numpy(), sizes, "cpu", "float64")
    except ImportError:
        if args.particles_python:
            rows += particles_subprocess(args.particles_python, sizes)
            for r in rows[-len(sizes):]:
                if "seconds" in r:
                    print(f"{'particles':16s} {'float64':14s} N={r['N']:>9d} {r['seconds']:8.3f}s {r['particle_steps_per_s']:12.4g} particle-steps/s")
        else:
            rows.append({"method": "particles", "error": "not installed (needs numpy < 2); pass --particles-python"})

    def rate(method, n, dtype="torch.float64"):
        for r in rows:
            if r.get("method") == method and r.get("N") == n and r.get("dtype") in (dtype, "float64") and "seconds" in r:
                return r["particle_steps_per_s"]
        return None

    ratios = {}
    for other in ("hand_torch", "pyro_smcfilter", "particles", "ours_pyro_step"):
        a, b = rate("ours_fk", 10**5), rate(other, 10**5)
        if a and b:
            ratios[f"ours_fk/{other} at N=1e5 (float64)"] = a / b
    result = {
        "benchmark": "LGSSM bootstrap particle filter, T=100, a=0.9, q=1, r=0.5",
        "unit": "particle-steps per second (N * T / wall seconds), best of 3 for N <= 1e5",
        "machine": {"clock": CLOCK.__name__, "platform": platform.platform(), "processor": platform.processor(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "kalman_log_evidence": kalman_filter(y)[0],
        "anchors_cpu_N1e5": {"blackjax": 1.3e7, "particles": 7.7e6, "pyro_smcfilter": 5.4e6},
        "results": rows,
        "ratios": ratios,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(ratios, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
