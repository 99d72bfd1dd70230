"""A Gaussian mixture with a discrete latent per point: RWS, VIMCO and score-function ELBO recover its MLE."""
import pyro
import pytest
import torch

import ppl.inference.vi as V
from ppl.inference import Program
from vi_helpers import gmm, gmm_data, gmm_em, make_gmm_guide


@pytest.fixture(autouse=True)
def clean():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.mark.parametrize("objective,steps", [("rws", 120), ("vimco", 120), pytest.param("score", 200, marks=pytest.mark.slow)])
def test_discrete_latent_objectives_recover_mixture(objective, steps):
    x = gmm_data(n=400)
    w_mle, locs_mle = gmm_em(x)
    fit = V.fit(gmm, x, guide=make_gmm_guide(), objective=objective, plate="data", particles=6,
                steps=steps, lr=0.08 if steps < 200 else 0.05, seed=0)
    assert fit.history.steps_done == steps
    w = pyro.param("weights").detach().double()
    locs = pyro.param("locs").detach().double()
    # MLE standard errors at n=400 are about 0.1 (locations) and 0.02 (weights); demand a fraction of them
    assert (locs - locs_mle).abs().max() < 0.05, (locs, locs_mle)
    assert (w - w_mle).abs().max() < 0.02, (w, w_mle)


def test_pyro_guide_log_weights_shapes_and_plate_sum():
    x = gmm_data(n=50)
    guide = make_gmm_guide()
    program = Program(gmm, (x,))
    torch.manual_seed(0)
    log_p, log_q = V.pyro_guide_log_weights(program, guide, 6, plate="data")
    assert log_p.shape == (6, 50) and log_q.shape == (6, 50)
    torch.manual_seed(0)
    tot_p, tot_q = V.pyro_guide_log_weights(program, guide, 6)
    assert torch.allclose(log_p.sum(1), tot_p, atol=1e-3)
    assert torch.allclose(log_q.sum(1), tot_q, atol=1e-3)


def test_vi_engine_with_pyro_guide_returns_discrete_draws():
    x = gmm_data(n=60)
    res = V.vi(gmm, x, guide=make_gmm_guide(), objective="rws", plate="data", particles=4, steps=30, lr=0.05,
               draws=100, seed=0)
    assert res.samples["z"].shape == (1, 100, 60)
    assert set(res.samples["z"].unique().tolist()) <= {0, 1}
    assert res.attrs["elbo"] <= res.attrs["iwae"] + 1.0
