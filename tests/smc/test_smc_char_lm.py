"""Constrained character LM: SMC steering gives exact-weight samples and log P(constraint) (exact by a forward pass)."""
import torch

from ppl.inference.smc.filters import particle_filter
from ppl.inference.smc.program_smc import smc
from ppl.models import char_lm as lm



def test_exact_evidence_matches_enumeration_for_short_strings():
    table = lm.fit_trigram()
    mask = lm.allowed_mask("e")
    # enumerate all 3-character strings
    a = torch.arange(lm.V)
    c0, c1, c2 = torch.meshgrid(a, a, a, indexing="ij")
    logp = table[0, 0][c0] + table[0, c0, c1] + table[c0, c1, c2]
    ok = mask[c0] & mask[c1] & mask[c2]
    exact = float(torch.logsumexp(logp[ok], 0))
    assert abs(exact - lm.exact_log_evidence(3, "e")) < 1e-10


def test_steering_filter_exact_log_z_and_valid_samples():
    kw = {"banned": "et"}
    exact = lm.exact_log_evidence(10, "et")
    r = particle_filter(lm.char_lm_init, lm.char_lm_step, [None] * 10, particles=1000, proposal=lm.steering_proposal,
                        step_kwargs=kw, init_kwargs=kw, seed=0)
    assert abs(r.log_evidence - exact) < 4 * r.log_evidence_se + 0.01
    text = torch.stack([r.samples[f"c_{t}"][0] for t in range(10)], 1)
    assert bool(lm.allowed_mask("et")[text].all())


def test_program_smc_on_registered_model():
    from ppl.models import get_model

    spec = get_model("char_lm")
    d = spec.data(length=8)
    r = smc(spec.model, particles=1000, model_kwargs=d, seed=1)
    assert abs(r.log_evidence - spec.ground_truth(d).log_evidence) < 4 * r.log_evidence_se + 0.01


def test_steering_beats_rejection_at_equal_compute():
    out = lm.compare_at_equal_compute(budget=1000, length=12, banned="et", seed=0)
    s, rej = out["smc_steering"], out["rejection"]
    assert s["valid"] == 1000 > rej["valid"]
    assert abs(s["log_evidence"] - out["exact_log_evidence"]) < 4 * s["log_evidence_se"] + 0.01
    assert s["log_evidence_se"] < rej["log_evidence_se"]
    assert out["best_of_n"]["valid"] == 1 and set(out["best_of_n"]["output"]).isdisjoint("et")
