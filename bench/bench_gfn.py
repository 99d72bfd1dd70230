"""Benchmark: GFlowNet training on HyperGrid (TB, batch 256, MLP 256x2 ReLU), ours vs torchgfn.

The same policy on both sides: torchgfn's ``MLP`` (two hidden layers of 256, ReLU) and our
``Policy(activation="relu")``, with P_B either uniform or learned on the shared trunk (torchgfn's
``train_hypergrid_simple.py`` default: a P_B head tied to the P_F trunk; ours: one head for both).
Measures training iterations per second and the wall time until the policy's exact terminal
distribution (dynamic programming, no sampling noise) is within L1 0.05 of the normalised reward.
torch runs on one thread (its default threads collapse when another process holds a core).
torchgfn is optional: if ``import gfn`` fails (or TORCHGFN_PATH does not hold it) it is skipped
and the JSON says so. Writes bench/results/gfn.json.

    python bench/bench_gfn.py [--max-iters 1000] [--max-seconds 240] [--pb uniform learned] [--diffusion-iters 400]
    python bench/bench_gfn.py --device cuda --sweep 16 64 256 1024 4096   # batch sweep -> gfn_sweep_cuda.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from ppl.inference.gfn import Policy, TrainConfig, Trainer, l1_to_target, terminal_distribution
from ppl.inference.gfn.env import masked_log_softmax
from ppl.models.gfn_envs import HyperGrid

BATCH, HIDDEN, TARGET_L1 = 256, 256, 0.05


def _our_trainer(env, learn_pb, seed, batch=BATCH):
    policy = Policy(env.encoding_dim, env.n_actions, env.n_bactions, HIDDEN, 2, learn_pb=learn_pb, activation="relu")
    return Trainer(env, policy, TrainConfig(loss="tb", batch_size=batch, lr=1e-3, lr_log_z=0.1), seed=seed)


def _window_iters_per_s(step, device, warmup=5, n=30) -> float:
    """Iterations per second over iterations warmup..warmup+n (the same window on both sides:
    trajectories lengthen as training goes)."""
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return n / (time.perf_counter() - t0)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def bench_ours(ndim, height, max_iters, max_seconds, eval_every, learn_pb=False, seed=0):
    env = HyperGrid(ndim, height, R0=0.1)
    its = _window_iters_per_s(_our_trainer(env, learn_pb, seed).step, "cpu")
    tr = _our_trainer(env, learn_pb, seed)
    return {"iters_per_s": its, **_time_to_l1(env, tr.step, lambda: l1_to_target(env, tr.policy), max_iters,
                                              max_seconds, eval_every), "log_z": tr.policy.log_z.item(),
            "true_log_z": env.true_log_z()}


def _time_to_l1(env, step, l1_fn, max_iters, max_seconds, eval_every):
    train_time, it, l1 = 0.0, 0, float("nan")
    while it < max_iters and train_time < max_seconds:
        t0 = time.perf_counter()
        for _ in range(eval_every):
            step()
        train_time += time.perf_counter() - t0
        it += eval_every
        l1 = l1_fn()
        if l1 < TARGET_L1:
            break
    reached = l1 < TARGET_L1
    return {"time_to_l1_s": train_time if reached else None, "iters_to_l1": it if reached else None,
            "final_l1": l1, "iters_run": it, "train_time_s": train_time, "iters_per_s_over_run": it / train_time}


def _torchgfn_trainer(ndim, height, learn_pb, seed, batch=BATCH, device="cpu"):
    """torchgfn's HyperGrid, MLP estimators and TB, as its example scripts build them: (step, P_F module, reset)."""
    from gfn.estimators import DiscretePolicyEstimator
    from gfn.gflownet import TBGFlowNet
    from gfn.gym import HyperGrid as TGHyperGrid
    from gfn.preprocessors import KHotPreprocessor
    from gfn.utils.modules import MLP, UniformModule

    torch.manual_seed(seed)
    tenv = TGHyperGrid(ndim=ndim, height=height, reward_fn_kwargs={"R0": 0.1, "R1": 0.5, "R2": 2.0}, device=device)
    pre = KHotPreprocessor(height=height, ndim=ndim)
    pf_mod = MLP(input_dim=pre.output_dim, output_dim=tenv.n_actions, hidden_dim=HIDDEN, n_hidden_layers=2)
    pb_mod = (MLP(input_dim=pre.output_dim, output_dim=tenv.n_actions - 1, trunk=pf_mod.trunk) if learn_pb
              else UniformModule(output_dim=tenv.n_actions - 1))
    pf = DiscretePolicyEstimator(pf_mod, tenv.n_actions, preprocessor=pre, is_backward=False)
    pb = DiscretePolicyEstimator(pb_mod, tenv.n_actions, preprocessor=pre, is_backward=True)
    net = TBGFlowNet(pf=pf, pb=pb, logZ=0.0).to(device)
    opt = []

    def reset():
        for m in [*pf_mod.modules(), *pb_mod.modules()]:
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        with torch.no_grad():
            for q in net.logz_parameters():
                q.zero_()
        opt[:] = [torch.optim.Adam(net.pf_pb_parameters(), lr=1e-3)]
        opt[0].add_param_group({"params": net.logz_parameters(), "lr": 1e-1})

    def step():
        trajs = net.sample_trajectories(tenv, n=batch, save_logprobs=True)
        opt[0].zero_grad()
        loss = net.loss(tenv, trajs, recalculate_all_logprobs=False)
        loss.backward()
        opt[0].step()

    reset()
    return step, pf_mod, reset


def bench_torchgfn(ndim, height, max_iters, max_seconds, eval_every, learn_pb=False, seed=0):
    step, pf_mod, reset = _torchgfn_trainer(ndim, height, learn_pb, seed)
    env = HyperGrid(ndim, height, R0=0.1)

    class Adapter:  # torchgfn's P_F module on our exact DP (same k-hot encoding, same action order)
        def log_pf(self, x, mask):
            return masked_log_softmax(pf_mod(x), mask)

    its = _window_iters_per_s(step, "cpu")
    reset()  # a fresh model for the time-to-L1 run
    out = _time_to_l1(env, step, lambda: float((terminal_distribution(env, Adapter()) - env.true_distribution()).abs().sum()),
                      max_iters, max_seconds, eval_every)
    return {"iters_per_s": its, **out}


def batch_sweep(device: str, batches, have_tg: bool, learn_pb: bool = False, ndim: int = 4, height: int = 8) -> list:
    """Iterations per second against batch size on ``device`` (issue: 16..4096 on a GPU), both libraries."""
    rows = []
    for batch in batches:
        env = HyperGrid(ndim, height, R0=0.1, device=device)
        row = {"batch": batch, "ours": _window_iters_per_s(_our_trainer(env, learn_pb, 0, batch).step, device)}
        if have_tg:
            row["torchgfn"] = _window_iters_per_s(_torchgfn_trainer(ndim, height, learn_pb, 0, batch, device)[0], device)
            row["speedup"] = row["ours"] / row["torchgfn"]
        print("sweep", device, row, flush=True)
        rows.append(row)
    return rows


def bench_diffusion(iters: int, seed: int = 0) -> dict:
    """Diffusion sampler (TB + exploration + replay + MALA local search, N = 50) on 25-GMM: time, log Z errors, modes."""
    from ppl.inference.gfn.diffusion import DiffusionConfig, DiffusionSampler
    from ppl.models.gfn_targets import GMM25
    gmm = GMM25()
    cfg = DiffusionConfig(steps=50, lr=2e-3, exploration=1.0, replay_every=2, local_search_every=10)
    s = DiffusionSampler(gmm, config=cfg, seed=seed)
    t0 = time.perf_counter()
    s.train(iters)
    dt = time.perf_counter() - t0
    e = s.log_z_estimates(4000, target_samples=gmm.sample(4000, torch.Generator().manual_seed(seed + 1)))
    counts = torch.bincount(gmm.nearest_mode(s.sample(2000)), minlength=25)
    return {"iters": iters, "train_s": dt, "iters_per_s": iters / dt, "log_z": gmm.log_z,
            "err_importance": e.importance - gmm.log_z, "importance_se": e.importance_se,
            "err_learned": e.learned - gmm.log_z, "elbo_gap": gmm.log_z - e.lower, "eubo_gap": e.upper - gmm.log_z,
            "ess_of_4000": e.ess, "modes_visited_of_25": int((counts > 0).sum()), "min_mode_count_of_2000": int(counts.min())}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-iters", type=int, default=1000)
    ap.add_argument("--max-seconds", type=float, default=240.0)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--pb", nargs="+", choices=["uniform", "learned"], default=["uniform", "learned"],
                    help="backward policies to run: uniform, and/or learned on the shared trunk")
    ap.add_argument("--device", default="cpu", help="with --sweep: the device of the batch-size sweep (cuda on a GPU)")
    ap.add_argument("--sweep", type=int, nargs="*", default=None, metavar="BATCH",
                    help="only the 4-D iterations/s sweep over these batch sizes (e.g. 16 64 256 1024 4096)")
    ap.add_argument("--diffusion-iters", type=int, default=0, help="also run the 25-GMM diffusion sampler (0: skip)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gfn.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    extra = os.environ.get("TORCHGFN_PATH")
    if extra:
        sys.path.insert(0, extra)
    try:
        import gfn.estimators, gfn.gflownet, gfn.gym, gfn.preprocessors, gfn.utils.modules  # noqa: F401
        have_tg, why = True, None
    except Exception as e:  # pragma: no cover - depends on the machine
        have_tg, why = False, f"torchgfn not importable: {e}"
    results = {"batch": BATCH, "hidden": HIDDEN, "activation": "relu", "loss": "tb", "threads": 1,
               "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
               "load_avg_start": os.getloadavg()[0], "tasks": {}}
    if args.sweep:
        results["device"] = args.device
        results["sweep"] = {pb: batch_sweep(args.device, args.sweep, have_tg, pb == "learned") for pb in args.pb}
        args.out = args.out.replace(".json", f"_sweep_{torch.device(args.device).type}.json")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(json.dumps(results, indent=2))
        return
    for pb in args.pb:
        learn_pb = pb == "learned"
        for ndim, height in ((2, 8), (4, 8)):
            key = f"hypergrid_{ndim}d_h{height}" + ("_learned_pb" if learn_pb else "")
            row = {"pb": pb, "ours": bench_ours(ndim, height, args.max_iters, args.max_seconds, args.eval_every, learn_pb)}
            print(key, "ours", row["ours"], flush=True)
            if have_tg:
                row["torchgfn"] = bench_torchgfn(ndim, height, args.max_iters, args.max_seconds, args.eval_every, learn_pb)
                row["speedup_iters_per_s"] = row["ours"]["iters_per_s"] / row["torchgfn"]["iters_per_s"]
                row["speedup_over_training_run"] = (row["ours"]["iters_per_s_over_run"]
                                                    / row["torchgfn"]["iters_per_s_over_run"])
                print(key, "torchgfn", row["torchgfn"], flush=True)
            else:
                row["torchgfn"] = {"skipped": why}
            results["tasks"][key] = row
    if args.diffusion_iters > 0:
        results["tasks"]["diffusion_gmm25"] = bench_diffusion(args.diffusion_iters)
        print("diffusion_gmm25", results["tasks"]["diffusion_gmm25"], flush=True)
    results["load_avg_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
