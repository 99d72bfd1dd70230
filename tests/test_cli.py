"""The command line: listing, running registry and file models, outputs, and its error messages."""
import json
import subprocess
import sys
import textwrap

import arviz as az
import numpy as np
import pytest

from ppl.cli import main


def test_lists_models_and_engines(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "normal_normal" in out and "eight_schools_noncentered" in out
    assert main(["engines"]) == 0
    assert "importance" in capsys.readouterr().out


def test_run_registry_model_writes_json_idata_and_plots(tmp_path):
    out = tmp_path / "nn"
    assert main(["run", "normal_normal", "--engine", "importance", "--particles", "50000",
                 "--seed", "3", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "result.json").read_text())
    assert report["engine"] == "importance" and report["model"] == "normal_normal"
    assert abs(report["log_evidence"] - report["ground_truth_log_evidence"]) < 4 * report["log_evidence_se"]
    assert set(report["summary"]["mu"]) >= {"mean", "sd"}
    assert report["runtime_s"] > 0 and "trace.png" in report["plots"]
    assert (out / "trace.png").stat().st_size > 1000
    idata = az.from_netcdf(str(out / "idata.nc"))
    assert np.isfinite(az.loo(idata).elpd_loo)


def test_run_user_model_file_with_json_data(tmp_path):
    model_file = tmp_path / "my_model.py"
    model_file.write_text(textwrap.dedent("""
        import pyro, pyro.distributions as dist

        def beta_binomial(k, n):
            p = pyro.sample("p", dist.Beta(1.0, 1.0))
            with pyro.plate("trials", len(k)):
                pyro.sample("k", dist.Binomial(n, p), obs=k)
    """))
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"k": [3, 5, 4], "n": [10, 10, 10]}))
    out = tmp_path / "bb"
    assert main(["run", f"{model_file}:beta_binomial", "--data", str(data), "--engine", "importance",
                 "--particles", "100000", "--out", str(out), "--quiet", "--no-plots"]) == 0
    report = json.loads((out / "result.json").read_text())
    # exact: p | k ~ Beta(1 + 12, 1 + 18); log Z = log C(10,3)C(10,5)C(10,4) + log B(13, 19)
    from math import comb, lgamma, log
    log_z = log(comb(10, 3) * comb(10, 5) * comb(10, 4)) + lgamma(13) + lgamma(19) - lgamma(32)
    assert abs(report["log_evidence"] - log_z) < 4 * report["log_evidence_se"]
    assert abs(report["summary"]["p"]["mean"] - 13 / 32) < 0.01
    idata = az.from_netcdf(str(out / "idata.nc"))
    assert idata.log_likelihood["k"].dims == ("chain", "draw", "trials")


@pytest.mark.parametrize("args, message", [
    (["run", "no_such_model", "--engine", "importance"], "unknown model 'no_such_model'"),
    (["run", "normal_normal", "--engine", "no_such_engine"], "unknown engine 'no_such_engine'"),
    (["run", "missing.py:f", "--engine", "importance"], "does not exist"),
])
def test_bad_names_get_one_line_errors(tmp_path, capsys, args, message):
    assert main(args + ["--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_bad_data_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    assert main(["run", "normal_normal", "--engine", "importance", "--data", str(bad), "--out", str(tmp_path)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    ragged = tmp_path / "ragged.json"
    ragged.write_text(json.dumps({"y": [[1, 2], [3]]}))
    assert main(["run", "normal_normal", "--engine", "importance", "--data", str(ragged), "--out", str(tmp_path)]) == 2
    assert "rectangular" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ppl", "models"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "lgssm" in proc.stdout


def test_engine_specific_options(tmp_path, capsys):
    out = tmp_path / "vi"
    assert main(["run", "normal_normal", "--engine", "vi", "-o", "steps=500", "-o", "lr=0.05", "-o", "guide=fullrank",
                 "--draws", "200", "--out", str(out), "--quiet", "--no-plots"]) == 0
    report = json.loads((out / "result.json").read_text())
    # a full-rank Gaussian guide is exact here: the ELBO reaches log Z
    assert abs(report["elbo"] - report["ground_truth_log_evidence"]) < 0.05
    assert main(["run", "normal_normal", "--engine", "importance", "-o", "bogus=1", "--out", str(out)]) == 2
    assert "has no option 'bogus'" in capsys.readouterr().err
    assert main(["run", "normal_normal", "--engine", "importance", "-o", "novalue", "--out", str(out)]) == 2
