"""Tempered SMC samplers and program SMC against exact answers (conjugate normal, Kalman)."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl.handlers.barrier import BarrierMessenger
from ppl.inference.program import ModelError, Program
from ppl.inference.smc import ScheduleError, ibis, next_temperature, tempered_smc, validate_schedule
from ppl.inference.smc import run_smc
from ppl.inference.smc.program_smc import ProgramFK, smc
from ppl.models import get_model



@pytest.fixture(scope="module")
def conjugate():
    spec = get_model("normal_normal")
    d = spec.data(seed=0)
    return spec, d, spec.ground_truth(d)


@pytest.mark.parametrize("move", ["rwmh", "mala", "hmc"])
def test_tempered_smc_conjugate(conjugate, move):
    spec, d, gt = conjugate
    r = tempered_smc(spec.model, particles=1000, model_kwargs=d, seed=0, move=move)
    se = max(r.log_evidence_se, 0.02)
    assert abs(r.log_evidence - gt.log_evidence) < 4 * se
    post_sd = float(gt.posterior_sd["mu"])
    assert abs(float(r.mean("mu")) - float(gt.posterior_mean["mu"])) < 4 * post_sd / math.sqrt(r.ess)
    assert abs(float(r.sd("mu")) / post_sd - 1) < 0.15
    temps = r.diagnostics["temperature"]
    assert float(temps[-1]) == 1.0 and bool((temps[1:] > temps[:-1]).all())
    assert "ess" in r.diagnostics and "acceptance" in r.diagnostics


def test_any_mcmc_kernel_class_as_move(conjugate):
    from ppl.inference.mcmc.rwmh import RWMH

    spec, d, gt = conjugate
    r = tempered_smc(spec.model, particles=500, model_kwargs=d, seed=0, move=RWMH, move_steps=3)
    assert abs(r.log_evidence - gt.log_evidence) < 4 * max(r.log_evidence_se, 0.03)
    assert float(r.diagnostics["acceptance"].min()) > 0.05


def test_tempered_se_matches_spread_and_unbiased(conjugate):
    spec, d, gt = conjugate
    lz, se = [], []
    for s in range(12):
        r = tempered_smc(spec.model, particles=300, model_kwargs=d, seed=s, resampling="multinomial", move_steps=3)
        lz.append(r.log_evidence)
        se.append(r.log_evidence_se)
    lz = torch.tensor(lz)
    ratio = torch.exp(lz - gt.log_evidence)
    assert abs(float(ratio.mean()) - 1) < 4 * float(ratio.std()) / math.sqrt(len(lz)) + 0.02
    spread, reported = float(lz.std()), float(torch.tensor(se).mean())
    assert 0.4 < reported / spread < 2.5  # 12 seeds: the spread itself is uncertain by ~20%


def test_fixed_schedule_and_cess(conjugate):
    spec, d, gt = conjugate
    r = tempered_smc(spec.model, particles=800, model_kwargs=d, seed=1, schedule=[0.0, 0.01, 0.05, 0.2, 0.5, 1.0])
    assert r.diagnostics["temperature"].tolist() == [0.01, 0.05, 0.2, 0.5, 1.0]
    assert abs(r.log_evidence - gt.log_evidence) < 4 * max(r.log_evidence_se, 0.03)
    c = tempered_smc(spec.model, particles=800, model_kwargs=d, seed=1, conditional=True, target_ess=0.7)
    assert abs(c.log_evidence - gt.log_evidence) < 4 * max(c.log_evidence_se, 0.03)


def test_ibis_data_tempering(conjugate):
    spec, d, gt = conjugate
    r = ibis(spec.model, particles=1000, model_kwargs=d, seed=0, num_batches=5, move="mala")
    assert r.diagnostics["observations"].tolist() == [4, 8, 12, 16, 20]
    assert abs(r.log_evidence - gt.log_evidence) < 4 * max(r.log_evidence_se, 0.02)
    post_sd = float(gt.posterior_sd["mu"])
    assert abs(float(r.mean("mu")) - float(gt.posterior_mean["mu"])) < 4 * post_sd / math.sqrt(r.ess)


@pytest.mark.parametrize("bad, match", [([0.5, 0.2, 1.0], "increase strictly"), ([0.1, 0.5], "end at exactly 1"),
                                        ([-0.1, 1.0], r"\[0, 1\]"), ([], "empty"), ([0.3, float("nan"), 1.0], "non-finite")])
def test_bad_schedule(bad, match):
    with pytest.raises(ScheduleError, match=match):
        validate_schedule(bad)


def test_next_temperature_hits_target_ess():
    torch.manual_seed(0)
    incr = -50 * torch.rand(2000, dtype=torch.float64)
    lwn = torch.full((2000,), -math.log(2000), dtype=torch.float64)
    b = next_temperature(lwn, incr, 0.0, 0.5)
    w = torch.softmax(lwn + b * incr, 0)
    assert abs(float(1 / (w**2).sum()) / 2000 - 0.5) < 1e-3


def test_geometric_path_and_product_of_experts(conjugate):
    spec, d, gt = conjugate

    def reference(y, sigma, mu0, tau0):
        pyro.sample("mu", dist.Normal(3.0, 1.0))

    r = tempered_smc(spec.model, particles=1000, model_kwargs=d, seed=0, reference=reference)
    assert abs(r.log_evidence - gt.log_evidence) < 4 * max(r.log_evidence_se, 0.02)

    # product of two normal "experts" on mu: N(0,1) x N(2,1) ∝ N(1, 1/2), normaliser N(0 - 2; 0, 2)
    def expert1():
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    def expert2():
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        pyro.factor("e2", dist.Normal(2.0, 1.0).log_prob(mu) - dist.Normal(0.0, 10.0).log_prob(mu))

    p = tempered_smc(expert1, particles=2000, seed=0, experts=[expert2])
    assert abs(float(p.mean("mu")) - 1.0) < 4 * math.sqrt(0.5 / p.ess)
    exact = float(dist.Normal(0.0, math.sqrt(2.0)).log_prob(torch.tensor(2.0)))
    assert abs(p.log_evidence - exact) < 4 * max(p.log_evidence_se, 0.02)


def test_tempered_nan_names_site():
    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.factor("bad", torch.where(mu > 0, torch.tensor(float("nan")), torch.tensor(0.0)))

    with pytest.raises(ValueError, match="bad"):
        tempered_smc(model, particles=100, seed=0)


# ------------------------------------------------------------------------------------------- program SMC
def test_barrier_stops_after_kth_observation():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("y1", dist.Normal(x, 1.0), obs=torch.tensor(0.0))
        pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("y2", dist.Normal(x, 1.0), obs=torch.tensor(0.0))

    tracer = pyro.poutine.trace_messenger.TraceMessenger()
    stop = BarrierMessenger(1)

    def run():
        with tracer, stop:
            model()

    stopped, _ = stop.call(run)
    assert stopped and list(tracer.get_trace().nodes)[-1] == "y1" and "z" not in tracer.get_trace().nodes


def test_program_smc_lgssm_matches_kalman():
    spec = get_model("lgssm_short")
    d = spec.data(seed=0)
    gt = spec.ground_truth(d)
    r = smc(spec.model, particles=2000, model_kwargs=d, seed=0)
    assert r.attrs["barriers"] == 10
    assert abs(r.log_evidence - gt.log_evidence) < 4 * max(r.log_evidence_se, 0.05)
    fm, fv = gt.extra["filter_means"], gt.extra["filter_vars"]
    assert abs(float(r.mean("x_9")) - float(fm[-1])) < 4 * math.sqrt(float(fv[-1]) / r.ess)


def test_program_smc_unbiased_over_seeds():
    spec = get_model("lgssm_short")
    d = spec.data(seed=1, T=4)
    lz_true = spec.ground_truth(d).log_evidence
    out = run_smc(ProgramFK(Program(spec.model, (), d)), 100, systems=200, seed=0, keep_history=False)
    ratio = torch.exp(out.log_evidence - lz_true)  # 200 independent particle systems in one batched run
    assert abs(float(ratio.mean()) - 1) < 4 * float(ratio.std()) / math.sqrt(200)


def test_program_smc_twist_keeps_log_z():
    spec = get_model("lgssm_short")
    d = spec.data(seed=0)
    gt = spec.ground_truth(d)
    y = d["y"]

    def twist(k, values):  # predictive of the next observation given the last state
        x = values[f"x_{k}"]
        return dist.Normal(0.9 * x, math.sqrt(1.25)).log_prob(y[k + 1])

    r = smc(spec.model, particles=2000, model_kwargs=d, seed=0, twist=twist)
    assert abs(r.log_evidence - gt.log_evidence) < 4 * max(r.log_evidence_se, 0.05)


def test_program_smc_without_observations_is_an_error():
    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ModelError, match="no observed sites"):
        smc(model, particles=10)


def test_kernel_move_decorrelates_the_cloud():
    """KernelMove(decorrelate=c) keeps stepping until no coordinate's start-end correlation exceeds c
    (or max_steps), leaves an exact Gaussian cloud exact, and reports its step count."""
    from ppl.inference.mcmc.hmc import HMC
    from ppl.inference.smc.moves import KernelMove, max_correlation

    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([1.0, 10.0, 0.1], dtype=torch.float64)
    z = torch.randn(4000, 3, generator=g, dtype=torch.float64) * scale

    def terms(x):
        return -0.5 * ((x / scale) ** 2).sum(-1), torch.zeros(x.shape[0], dtype=x.dtype)

    def terms_grad(x, beta):
        return terms(x)[0], torch.zeros(x.shape[0], dtype=x.dtype), -x / scale ** 2

    base, incr = terms(z)
    torch.manual_seed(1)
    fixed = KernelMove(HMC, steps=1, num_steps=1, step_size=0.3)
    z1, *_, info1 = fixed(z, base, incr, 1.0, terms, terms_grad)
    assert info1.steps == 1 and max_correlation(z, z1) > 0.9  # one short step leaves the cloud correlated
    auto = KernelMove(HMC, steps=1, num_steps=1, step_size=0.3, decorrelate=0.1, max_steps=400)
    z2, *_, info2 = auto(z, base, incr, 1.0, terms, terms_grad)
    assert 1 < info2.steps < 400 and max_correlation(z, z2) <= 0.1
    torch.testing.assert_close(z2.std(0), scale, rtol=0.06, atol=0)  # the target is left invariant
    with pytest.raises(ValueError, match="decorrelate"):
        KernelMove(HMC, decorrelate=1.5)


def test_tempered_smc_with_decorrelating_moves(conjugate):
    from ppl.inference.mcmc.hmc import HMC
    from ppl.inference.smc.moves import KernelMove

    spec, d, gt = conjugate
    move = KernelMove(HMC, steps=1, num_steps=1, step_size=0.05, dense=True, decorrelate=0.1, max_steps=200)
    r = tempered_smc(spec.model, particles=1000, model_kwargs=d, seed=0, move=move)
    assert abs(r.log_evidence - gt.log_evidence) < 4 * max(r.log_evidence_se, 0.02)
    post_sd = float(gt.posterior_sd["mu"])
    assert abs(float(r.mean("mu")) - float(gt.posterior_mean["mu"])) < 4 * post_sd / math.sqrt(r.ess)
    steps = r.diagnostics["move_steps"]
    assert bool((steps >= 1).all()) and float(steps.max()) > 1
