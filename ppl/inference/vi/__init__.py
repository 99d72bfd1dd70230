"""Variational and amortized inference: guides, objectives, the training driver, bounds and the ``vi`` engine."""
from ppl.inference.vi.amortize import AmortizedFit, amortize, make_encoder
from ppl.inference.vi.bounds import coverage, elbo, eubo, iwae, sbc_ranks, sbc_uniformity_pvalue
from ppl.inference.vi.engine import VIFit, fit, vi
from ppl.inference.vi.guides import (
    AmortizedGuide, ConditionedGuide, FlowGuide, FullRankGuide, Guide, LowRankGuide, MLPEncoder,
    NormalGuide, SetEncoder, as_pyro_guide, auto_guide,
)
from ppl.inference.vi.joint import JointDensity
from ppl.inference.vi.objectives import (
    csis_loss, elbo_loss, get_objective, iwae_loss, rws_loss, rws_wake_phi_loss, rws_wake_theta_loss,
    score_function_elbo_loss, vimco_loss,
)
from ppl.inference.vi.pyro_guides import GuideSupportError, guided_traces, pyro_guide_log_weights, run_guide, trace_params
from ppl.inference.vi.train import History, NonFiniteLossError, train

__all__ = [
    "vi", "fit", "VIFit", "amortize", "AmortizedFit", "make_encoder",
    "Guide", "NormalGuide", "LowRankGuide", "FullRankGuide", "FlowGuide", "AmortizedGuide", "ConditionedGuide",
    "MLPEncoder", "SetEncoder", "as_pyro_guide", "auto_guide", "JointDensity",
    "elbo_loss", "iwae_loss", "score_function_elbo_loss", "rws_wake_theta_loss", "rws_wake_phi_loss", "rws_loss",
    "vimco_loss", "csis_loss", "get_objective",
    "GuideSupportError", "pyro_guide_log_weights", "guided_traces", "run_guide", "trace_params",
    "train", "History", "NonFiniteLossError",
    "elbo", "iwae", "eubo", "sbc_ranks", "sbc_uniformity_pvalue", "coverage",
]
from ppl.inference.vi.fivo import (GuidedStateSpaceFK, LinearGaussianProposal, as_proposal_program, fivo, fivo_bound,
                                   lgssm_fk, lgssm_sample, log_evidence_spread)
from ppl.inference.vi.twists import (LGSSMTwistedProposalFK, QuadraticTwist, contrastive_twist_loss,
                                     lgssm_optimal_twist, train_twists)

__all__ += [
    "LinearGaussianProposal", "GuidedStateSpaceFK", "lgssm_fk", "lgssm_sample", "fivo_bound", "fivo",
    "as_proposal_program", "log_evidence_spread",
    "QuadraticTwist", "LGSSMTwistedProposalFK", "lgssm_optimal_twist", "contrastive_twist_loss", "train_twists",
]
