"""Tempered SMC on logistic regression (n=100, d=3) against long reference runs: NUTS moments, IS log Z."""
import math

import pyro.distributions as dist
import pytest
import torch

from ppl.inference.mcmc.driver import nuts
from ppl.inference.program import Program
from ppl.inference.result import log_mean_exp_with_se
from ppl.inference.runtime import seeded
from ppl.inference.smc import eve_se, tempered_smc
from ppl.inference.target import UnconstrainedTarget
from ppl.models import get_model



@pytest.fixture(scope="module")
def reference():
    """NUTS posterior draws (16 batched chains, 250 warmup: 150 biased the sds low) and an IS log Z with a Student-t proposal fitted to them."""
    az = pytest.importorskip("arviz")
    spec = get_model("logistic_regression_small")
    d = {k: v.double() for k, v in spec.data(seed=0).items()}
    ref = nuts(spec.model, chains=16, warmup=250, draws=125, seed=0, progress=False, model_kwargs=d,
               dtype=torch.float64)
    idata = ref.to_arviz()
    mcse_mean = az.mcse(idata, method="mean")
    mcse_sd = az.mcse(idata, method="sd")
    moments = {}
    for name in ("w", "b"):
        x = ref.samples[name].double().reshape(-1, *ref.samples[name].shape[2:])
        moments[name] = (x.mean(0), x.std(0), torch.as_tensor(mcse_mean[name].values, dtype=torch.float64),
                         torch.as_tensor(mcse_sd[name].values, dtype=torch.float64))
    # all latents are real-valued: the unconstrained point is the concatenation of the draws
    target = UnconstrainedTarget(Program(spec.model, (), d, dtype=torch.float64))
    z = target.flatten({k: ref.samples[k].double().reshape(-1, *ref.samples[k].shape[2:]) for k in ("w", "b")})
    mu, cov = z.mean(0), torch.cov(z.T)
    df = 5.0
    q = dist.MultivariateStudentT(torch.tensor(df, dtype=torch.float64), mu,
                                  torch.linalg.cholesky(1.2 * cov * (df - 2) / df))
    with seeded(1, None):
        log_w = []
        for _ in range(2):
            zq = q.sample((50_000,))
            log_w.append(target.log_prob(zq) - q.log_prob(zq))
    lz, lz_se = log_mean_exp_with_se(torch.cat(log_w))
    return spec, d, moments, lz, lz_se


def test_tempered_smc_logistic_matches_reference(reference):
    """log Z within 4 combined se of the IS reference; posterior means and sds within 4 combined MC se of NUTS."""
    spec, d, moments, lz_ref, lz_ref_se = reference
    assert lz_ref_se < 0.01  # the reference is precise enough to test against
    r = tempered_smc(spec.model, particles=2000, model_kwargs=d, seed=0, dtype=torch.float64)
    assert abs(r.log_evidence - lz_ref) < 4 * math.hypot(r.log_evidence_se, lz_ref_se)
    W = torch.softmax(r.log_weights[0].double(), 0)
    eve = r.sample_stats["eve"][0]
    for name, (m, s, m_se, s_se) in moments.items():
        x = r.samples[name][0].double().reshape(len(W), -1)
        est_m = (W[:, None] * x).sum(0)
        est_s = ((W[:, None] * (x - est_m) ** 2).sum(0)).sqrt()
        # Chan–Lai / Lee–Whiteley: the variance of a weighted mean over resampled, moved particles
        # from the weight-scaled deviations summed within each time-0 ancestor's descendants
        smc_m_se = eve_se(W, eve, x - est_m)
        smc_s_se = eve_se(W, eve, (x - est_m) ** 2 - est_s**2) / (2 * est_s)
        assert torch.allclose(est_m, r.mean(name).double().reshape(-1))
        assert bool(((est_m - m.reshape(-1)).abs() < 4 * torch.sqrt(m_se.reshape(-1)**2 + smc_m_se**2)).all()), (name, est_m, m)
        assert bool(((est_s - s.reshape(-1)).abs() < 4 * torch.sqrt(s_se.reshape(-1)**2 + smc_s_se**2)).all()), (name, est_s, s)

