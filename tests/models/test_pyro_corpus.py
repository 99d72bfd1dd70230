"""Models written as Pyro users write them, run unchanged through ppl's engines against exact answers.

The corpus (``pyro_corpus.py``) mirrors Pyro's own NUTS / HMC tests and examples; every case carries a
closed-form or quadrature ground truth. Whichever batching path a model needs (vectorized, vmap,
loop), the posterior must match: means within 4 Monte Carlo standard errors (from ArviZ's ESS for
MCMC, the weights' ESS for weighted results), log Z within 4 reported standard errors.
The fast tier runs NUTS on a representative subset and importance sampling on every cheap case;
``pytest -m slow`` runs every case through nuts, importance, tempered-smc and vi.
"""
import math
import os
import sys
import warnings

import arviz as az
import numpy as np
import pyro
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from pyro_corpus import CASE_BY_NAME, CASES  # noqa: E402

import ppl  # noqa: E402
from ppl.inference.batching import BatchingWarning  # noqa: E402
from ppl.inference.mcmc import nuts  # noqa: E402
from ppl.inference.smc import tempered_smc  # noqa: E402
from ppl.inference.vi import vi  # noqa: E402

CONTINUOUS = [c.name for c in CASES if not c.discrete]
FAST_NUTS = ["beta_bernoulli", "logistic_regression", "logistic", "linear_regression", "latent_indexing",
             "torch_stack", "deterministic", "normal_2d_to_event", "plate_dim_minus2", "poutine_scale",
             "matrix_regression", "pyro_factor"]
SLOW_SIMULATION = {"lkj_cholesky", "lkj_corr"}  # draws on the per-particle loop (LKJ's sampler does not vmap)


@pytest.fixture(autouse=True)
def _clean_param_store():
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BatchingWarning)
        yield
    pyro.clear_param_store()


def _mcmc_check(case, res):
    for name, truth in case.means.items():
        draws = res.samples[name].double()
        chains, n = draws.shape[:2]
        flat = draws.reshape(chains, n, -1).numpy()
        ess = np.array([float(az.ess(flat[:, :, j])) for j in range(flat.shape[-1])])
        sd = case.sds[name].reshape(-1).numpy()
        mean = flat.mean((0, 1))
        err = np.abs(mean - truth.reshape(-1).numpy())
        assert np.all(err < 4 * sd / np.sqrt(ess) + 1e-6), (name, mean, truth, ess)


def _weighted_check(case, res, min_ess=50.0):
    assert res.ess > min_ess, f"ESS {res.ess:.1f}: too few effective particles to check {case.name}"
    w = torch.softmax(res.log_weights[0].double(), 0)
    for name, truth in case.means.items():
        x = res.samples[name][0].double().reshape(w.shape[0], -1)
        mean = (w[:, None] * x).sum(0)
        sd = case.sds[name].reshape(-1)
        assert torch.all((mean - truth.reshape(-1)).abs() < 4 * sd / math.sqrt(res.ess) + 1e-6), (name, mean, truth)


def _run_nuts(case, draws=300):
    return nuts(case.model, *case.args, model_kwargs=case.kwargs, chains=4, warmup=300, draws=draws, seed=0,
                progress=False)


@pytest.mark.parametrize("name", FAST_NUTS)
def test_nuts_on_pyro_models_as_written(name):
    case = CASE_BY_NAME[name]
    res = _run_nuts(case)
    assert res.attrs["batching"] in ("vectorized", "vmap", "loop")
    _mcmc_check(case, res)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(CONTINUOUS) - set(FAST_NUTS)))
def test_nuts_on_every_corpus_model(name):
    case = CASE_BY_NAME[name]
    _mcmc_check(case, _run_nuts(case, draws=500))


def _importance_cases(fast):
    return [c.name for c in CASES if not c.discrete and (not fast or c.name not in SLOW_SIMULATION)]


@pytest.mark.parametrize("name", _importance_cases(fast=True))
def test_importance_on_pyro_models_as_written(name):
    case = CASE_BY_NAME[name]
    res = ppl.importance(case.model, *case.args, model_kwargs=case.kwargs, particles=20_000, seed=0)
    if res.ess < 500:
        pytest.skip(f"prior proposal too far from the posterior here (ESS {res.ess:.0f}): not a batching check")
    _weighted_check(case, res)
    assert abs(res.log_evidence - case.log_evidence) < 4 * res.log_evidence_se + 0.02


@pytest.mark.slow
@pytest.mark.parametrize("name", CONTINUOUS)
def test_tempered_smc_on_every_corpus_model(name):
    case = CASE_BY_NAME[name]
    res = tempered_smc(case.model, *case.args, model_kwargs=case.kwargs, particles=2000, move="hmc", seed=0)
    _weighted_check(case, res)
    assert abs(res.log_evidence - case.log_evidence) < 4 * res.log_evidence_se + 0.1


@pytest.mark.slow
@pytest.mark.parametrize("name", CONTINUOUS)
def test_vi_runs_on_every_corpus_model(name):
    """VI is biased in general: its means must be close to the truth, and its importance-weighted
    log Z (from the guide's draws) within 4 standard errors plus the bias the ESS allows."""
    case = CASE_BY_NAME[name]
    res = vi(case.model, *case.args, model_kwargs=case.kwargs, guide="fullrank", steps=1500, draws=4000, seed=0)
    for site, truth in case.means.items():
        mean = res.samples[site].double().reshape(-1, truth.numel()).mean(0)
        assert torch.all((mean - truth.reshape(-1)).abs() < 0.5 * case.sds[site].reshape(-1) + 1e-3), (site, mean, truth)
