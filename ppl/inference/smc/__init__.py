"""Sequential Monte Carlo on one Feynman–Kac substrate: particle filters, SMC samplers, program SMC,
twisted SMC and particle MCMC, all batched over particles (and over independent particle systems).
"""
from ppl.inference.smc.feynman_kac import (FeynmanKac, FKModel, NonFiniteWeightError, SMCOutput, StateShapeError,
                                           eve_se, ffbs, fixed_lag_se, lee_whiteley_se, run_smc)
from ppl.inference.smc.filters import (StateSpaceFK, particle_filter, pf, pooled_log_evidence, register_step_form,
                                       run_with_retries, smc_result)
from ppl.inference.smc.pmcmc import conditional_smc, particle_gibbs, pmmh
from ppl.inference.smc.program_smc import ProgramFK, smc
from ppl.inference.smc.moves import KernelMove, MALAMove, RWMHMove, make_move
from ppl.inference.smc.tempering import (GeometricPath, LikelihoodPath, ProductPath, ScheduleError, ibis,
                                         next_temperature, run_tempering, tempered_smc, validate_schedule)
from ppl.inference.smc.twisted import TwistedFK, twisted_smc
from ppl.inference.smc.reference import gaussian_reference

__all__ = [
    "FeynmanKac", "FKModel", "SMCOutput", "run_smc", "ffbs", "lee_whiteley_se", "fixed_lag_se", "eve_se",
    "NonFiniteWeightError", "StateShapeError",
    "StateSpaceFK", "particle_filter", "pf", "pooled_log_evidence", "register_step_form", "run_with_retries",
    "smc_result",
    "RWMHMove", "MALAMove", "KernelMove", "make_move",
    "LikelihoodPath", "GeometricPath", "ProductPath", "ScheduleError", "validate_schedule", "next_temperature",
    "run_tempering", "tempered_smc", "ibis",
    "TwistedFK", "twisted_smc", "gaussian_reference",
    "ProgramFK", "smc",
    "pmmh", "particle_gibbs", "conditional_smc",
]
