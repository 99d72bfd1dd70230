"""Importance sampling: time and peak memory against the number of particles (10^3 .. 10^6).

Shows that both grow linearly (one batched run, no per-particle Python), and compares with
Pyro's own ``pyro.infer.Importance`` (which runs the model once per particle) at the sizes where
that finishes quickly. Writes bench/results/importance.json.

    python bench/bench_importance.py [--max-particles 1000000]
"""
from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import torch


def measure(fn):
    tracemalloc.start()
    start = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-particles", type=int, default=1_000_000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "importance.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    import pyro
    from pyro.infer import Importance

    from ppl.inference import importance
    from ppl.models import get_model

    spec = get_model("normal_normal")
    data = spec.data()
    truth = spec.ground_truth(data).log_evidence
    rows = []
    n = 1000
    while n <= args.max_particles:
        # peak memory via tracemalloc misses torch's allocator; report the tensor bytes held instead
        result, elapsed, _ = measure(lambda: importance(spec.model, model_kwargs=data, particles=n, seed=0))
        held = sum(v.numel() * v.element_size() for v in result.samples.values())
        held += result.log_weights.numel() * result.log_weights.element_size()
        held += sum(v.numel() * v.element_size() for v in result.log_likelihood.values())
        row = {"particles": n, "seconds": elapsed, "result_bytes": held,
               "log_evidence": result.log_evidence, "log_evidence_se": result.log_evidence_se,
               "error_in_se": (result.log_evidence - truth) / result.log_evidence_se}
        if n <= 10_000:
            pyro.set_rng_seed(0)
            start = time.perf_counter()
            Importance(spec.model, num_samples=n).run(**data)
            row["pyro_importance_seconds"] = time.perf_counter() - start
            row["speedup_vs_pyro"] = row["pyro_importance_seconds"] / elapsed
        rows.append(row)
        print(json.dumps(row))
        n *= 10
    base = rows[0]
    for r in rows:
        r["seconds_per_particle"] = r["seconds"] / r["particles"]
        r["bytes_per_particle"] = r["result_bytes"] / r["particles"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": "normal_normal", "exact_log_evidence": truth,
                                          "threads": 1, "rows": rows}, indent=2))
    print(f"wrote {args.out}; time per particle {rows[-1]['seconds_per_particle']:.3g} s at "
          f"{rows[-1]['particles']} vs {base['seconds_per_particle']:.3g} s at {base['particles']}")


if __name__ == "__main__":
    main()
