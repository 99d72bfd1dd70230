"""Variational inference: optimisation speed and final ELBO against Pyro SVI; C2ST of flow guides on SBI tasks.

Part 1: a 256-group hierarchical linear-Gaussian model with an MLP-encoder guide (one Pyro guide
program, used by both libraries), Pyro ``SVI(Trace_ELBO(num_particles=P, vectorize_particles=True))``
vs ``ppl.inference.vi.fit(objective="elbo", particles=P)`` for P in {1, 16}: steps/s and the final
ELBO (evaluated identically for both, 2000 particles) against the exact log p(y).
Part 2: C2ST (a small MLP classifier, held-out accuracy; 0.5 = indistinguishable) between guide
samples and reference posterior samples on two moons (reference: exact density on a fine grid)
and Gaussian linear (exact), for a flow guide fitted to x_o and for an amortized NPE flow.
Part 3: the amortization gap on the conjugate Gaussian (exact KL on unseen observations).

    python bench/bench_vi.py [--steps 2000] [--quick]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch


# ------------------------------------------------------------------------------ part 1
def hierarchical_problem(groups=256, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(groups, n, generator=g)
    mu = torch.randn((), generator=g)
    beta = mu + torch.randn(groups, generator=g)
    y = beta.unsqueeze(-1) * x + 0.5 * torch.randn(groups, n, generator=g)
    return x, y


def hier_model(x, y):
    import pyro
    import pyro.distributions as dist

    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("groups", x.shape[0]):
        beta = pyro.sample("beta", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(beta.unsqueeze(-1) * x, 0.5).to_event(1), obs=y)


def make_hier_guide(n, seed=0):
    import pyro
    import pyro.distributions as dist
    from pyro.distributions import constraints
    from torch import nn

    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(2 * n, 32), nn.ELU(), nn.Linear(32, 2))

    def hier_guide(x, y):
        pyro.module("encoder", enc)
        m = pyro.param("mu_loc", torch.tensor(0.0))
        s = pyro.param("mu_scale", torch.tensor(0.1), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(m, s))
        h = enc(torch.cat([x, y], -1))
        with pyro.plate("groups", x.shape[0]):
            pyro.sample("beta", dist.Normal(h[..., 0], torch.nn.functional.softplus(h[..., 1]) + 1e-4))

    return hier_guide


def hier_log_evidence(x, y, sigma=0.5):
    """Exact log p(y): integrate beta per group (Gaussian), then mu (one-dimensional Gaussian)."""
    x, y = x.double(), y.double()
    n = x.shape[1]
    cov = sigma**2 * torch.eye(n, dtype=torch.float64) + x.unsqueeze(-1) * x.unsqueeze(-2)  # (G, n, n)
    prec = torch.linalg.inv(cov)
    a = torch.einsum("gi,gij,gj->", x, prec, x)
    b = torch.einsum("gi,gij,gj->", x, prec, y)
    c = torch.einsum("gi,gij,gj->", y, prec, y) + torch.logdet(cov).sum() + x.numel() * math.log(2 * math.pi)
    return float(-0.5 * c - 0.5 * math.log(1 + a) + b**2 / (2 * (1 + a)))


def final_elbo(x, y, guide, particles=2000):
    import pyro  # noqa: F401
    from ppl.inference import Program
    from ppl.inference.vi import pyro_guide_log_weights

    program = Program(hier_model, (x, y))
    with torch.no_grad():
        torch.manual_seed(123)
        log_p, log_q = pyro_guide_log_weights(program, guide, particles)
    lw = (log_p - log_q).double()
    return float(lw.mean()), float(lw.std() / math.sqrt(particles))


def run_pyro(x, y, particles, steps, lr, seed=0):
    import pyro
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import Adam

    pyro.clear_param_store()
    guide = make_hier_guide(x.shape[1], seed)
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)
    svi = SVI(hier_model, guide, Adam({"lr": lr}), elbo)
    pyro.set_rng_seed(seed)
    svi.step(x, y)  # warm-up (parameter creation) outside the timing
    start = time.perf_counter()
    for _ in range(steps - 1):
        svi.step(x, y)
    seconds = time.perf_counter() - start
    return (steps - 1) / seconds, final_elbo(x, y, guide)


def run_ours(x, y, particles, steps, lr, seed=0):
    import pyro
    from ppl.inference.vi import fit

    pyro.clear_param_store()
    guide = make_hier_guide(x.shape[1], seed)
    result = fit(hier_model, x, y, guide=guide, objective="elbo", particles=particles, steps=steps, lr=lr, seed=seed)
    return steps / result.history.seconds, final_elbo(x, y, guide)


def part1(steps, lr=0.01, seeds=(0,)):
    x, y = hierarchical_problem()
    log_z = hier_log_evidence(x, y)
    rows = []
    for seed in seeds:
        for particles in (1, 16):
            for lib, fn in (("pyro_svi", run_pyro), ("ppl", run_ours)):
                rate, (elbo, se) = fn(x, y, particles, steps, lr, seed)
                rows.append({"library": lib, "seed": seed, "particles": particles, "steps": steps, "steps_per_s": rate,
                             "final_elbo": elbo, "final_elbo_se": se, "log_evidence": log_z, "gap": log_z - elbo})
                print(rows[-1], flush=True)
    return {"model": "hierarchical linear-Gaussian, 256 groups x 8 obs, MLP-encoder guide", "rows": rows}


# ------------------------------------------------------------------------------ part 2
def c2st(a: torch.Tensor, b: torch.Tensor, seed=0, epochs=300) -> float:
    """Classifier two-sample test: held-out accuracy of an MLP telling ``a`` from ``b`` (0.5 is ideal)."""
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    n = min(a.shape[0], b.shape[0])
    a, b = a[:n].float(), b[:n].float()
    mean, sd = b.mean(0), b.std(0) + 1e-8
    X = (torch.cat([a, b]) - mean) / sd
    Y = torch.cat([torch.zeros(n), torch.ones(n)])
    perm = torch.randperm(2 * n, generator=g)
    X, Y = X[perm], Y[perm]
    cut = int(0.7 * 2 * n)
    torch.manual_seed(seed)
    d = X.shape[1]
    net = nn.Sequential(nn.Linear(d, 10 * d), nn.ReLU(), nn.Linear(10 * d, 10 * d), nn.ReLU(), nn.Linear(10 * d, 1))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(net(X[:cut]).squeeze(-1), Y[:cut])
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = ((net(X[cut:]).squeeze(-1) > 0).float() == Y[cut:]).float().mean()
    return float(acc)


def part2(quick, only=None, npe_steps=None, vi_steps=None):
    import ppl.models.vi_models as M
    from ppl.inference.vi import amortize, vi

    n = 2000
    out = []
    # (task, model, data, reference draws, NPE flow family, NPE guide options, VI flow guide options)
    tasks = [
        ("two_moons", M.two_moons, M.two_moons_data(), lambda d: M.two_moons_reference(d["x"], n=n), "spline",
         {"bins": 16, "hidden": [64, 64], "flows": 5}, {"kind": "affine", "flows": 3}),
        ("gaussian_linear", M.gaussian_linear, M.gaussian_linear_data(),
         lambda d: d["x"] / 2 + math.sqrt(0.05) * torch.randn(n, d["x"].shape[0], generator=torch.Generator().manual_seed(5)),
         "flow", {}, {"kind": "affine", "flows": 3}),
    ]
    for name, model, data, reference, family, npe_options, vi_options in tasks:
        if only and name not in only:
            continue
        ref = reference(data)
        start = time.perf_counter()
        steps = vi_steps or (400 if quick else 1000)
        res = vi(model, model_kwargs=data, guide="flow", guide_options=vi_options,
                 steps=steps, particles=32, lr=5e-3, draws=n, seed=0, schedule="cosine")
        row = {"task": name, "method": f"flow guide ({vi_options['kind']}, {vi_options['flows']} layers) fitted to x_o by ELBO",
               "steps": steps,
               "seconds": time.perf_counter() - start, "c2st": c2st(res.samples["theta"][0], ref),
               "elbo": res.attrs["elbo"]}
        print(row, flush=True)
        out.append(row)
        start = time.perf_counter()
        steps = npe_steps or (600 if quick else 2000)
        fitted = amortize(model, model_kwargs=data, objective="npe", family=family, steps=steps, batch_size=256,
                          lr=2e-3, seed=0, schedule="cosine", guide_options=npe_options)
        post = fitted.posterior(draws=n)
        row = {"task": name, "method": f"amortized NPE (conditional {'spline' if family == 'spline' else 'affine'} autoregressive flow)",
               "guide_options": npe_options, "steps": steps, "batch_size": 256, "seconds": time.perf_counter() - start,
               "c2st": c2st(post.samples["theta"][0], ref)}
        print(row, flush=True)
        out.append(row)
    return out


# ------------------------------------------------------------------------------ part 3
def part3(quick):
    import ppl.models.vi_models as M
    from ppl.inference.vi import amortize

    data = M.conjugate_gaussian_data()
    rows = []
    for objective, family in (("npe", "fullrank"), ("elbo", "fullrank"), ("npe", "normal")):
        fitted = amortize(M.conjugate_gaussian, model_kwargs=data, objective=objective, family=family,
                          steps=500 if quick else 2000, batch_size=128, particles=8, lr=3e-3, seed=0)
        torch.manual_seed(11)
        _, xs = fitted.joint.simulate(1000)
        d = fitted.guide.distribution(xs)
        mean, cov = M.gaussian_posterior(xs, data["A"], data["prior_scale"], data["noise"])
        p = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov.expand(1000, 2, 2))
        tril = d.scale_tril if family == "fullrank" else torch.diag_embed(d.stddev)
        q = torch.distributions.MultivariateNormal(d.mean.double(), scale_tril=tril.double())
        kl = torch.distributions.kl_divergence(q, p).detach()
        rows.append({"objective": objective, "family": family, "kl_q_p_mean": float(kl.mean()),
                     "kl_q_p_median": float(kl.median()), "kl_q_p_p95": float(kl.quantile(0.95))})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default="1,2,3")
    parser.add_argument("--seeds", default="0", help="part 1 seeds (comma-separated)")
    parser.add_argument("--tasks", default="", help="part 2 tasks (comma-separated); all by default")
    parser.add_argument("--npe-steps", type=int, default=None)
    parser.add_argument("--vi-steps", type=int, default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "vi.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"torch_threads": 1}
    parts = set(args.parts.split(","))
    if "1" in parts:
        results["svi_vs_pyro"] = part1(args.steps, seeds=tuple(int(v) for v in args.seeds.split(",")))
    if "2" in parts:
        results["c2st"] = part2(args.quick, [t for t in args.tasks.split(",") if t], args.npe_steps, args.vi_steps)
    if "3" in parts:
        results["amortization_gap"] = part3(args.quick)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    previous.update(results)
    Path(args.out).write_text(json.dumps(previous, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
