"""The common result type: ArviZ groups, dims from plates, LOO, netCDF round trip."""
import arviz as az
import numpy as np
import pytest
import torch

from ppl.inference import Result, importance
from ppl.models import get_model


@pytest.fixture(scope="module")
def eight_schools_result():
    spec = get_model("eight_schools_noncentered")
    return importance(spec.model, model_kwargs=spec.data(), particles=20_000, seed=0)


def test_to_arviz_has_the_groups_and_dims(eight_schools_result):
    idata = eight_schools_result.to_arviz()
    for group in ("posterior", "sample_stats", "log_likelihood", "observed_data"):
        assert group in idata.groups()
    assert idata.posterior["theta"].dims == ("chain", "draw", "school")
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "school")
    assert idata.observed_data["y"].dims == ("school",)
    assert "log_weight" in idata.sample_stats and "particle" in idata.sample_stats
    assert idata.posterior.attrs["log_evidence"] == pytest.approx(eight_schools_result.log_evidence)
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)


def test_resampled_draws_keep_the_weighted_mean(eight_schools_result):
    r = eight_schools_result
    draws = r.draws(num_draws=20_000, seed=1)
    assert not draws.weighted and draws.num_draws == 20_000
    sd = float(r.sd("mu"))
    assert abs(float(draws.mean("mu")) - float(r.mean("mu"))) < 4 * sd / np.sqrt(r.ess)


def test_save_and_load_round_trip(tmp_path, eight_schools_result):
    r = eight_schools_result
    path = r.save(tmp_path / "r.nc")
    back = Result.load(path)
    assert back.engine == "importance" and back.weighted
    assert back.log_evidence == pytest.approx(r.log_evidence)
    assert torch.allclose(back.log_weights.float(), r.log_weights.float())
    assert torch.allclose(back.samples["theta"].float(), r.samples["theta"].float())
    assert list(back.dims["theta"]) == ["school"]
    az.from_netcdf(str(path))  # and ArviZ reads the same file


def test_unweighted_result_and_bad_shapes():
    r = Result(engine="test", samples={"x": torch.randn(2, 50, 3)}, sample_stats={"lp": torch.randn(2, 50)})
    idata = r.to_arviz()
    assert idata.posterior["x"].shape == (2, 50, 3)
    assert r.ess == pytest.approx(100)
    with pytest.raises(ValueError, match="chain, draw"):
        Result(engine="test", samples={"x": torch.randn(5)})
    with pytest.raises(FileNotFoundError):
        Result.load("/nonexistent/result.nc")
