"""ppl: batched inference for Pyro programs (SMC, MCMC, amortized VI, GFlowNets) with ArviZ output."""
from ppl import diagnostics, handlers, inference, models
from ppl.inference import Result, importance

__version__ = "0.1.0"

__all__ = ["handlers", "inference", "models", "diagnostics", "Result", "importance", "__version__"]
