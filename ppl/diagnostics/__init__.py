"""Diagnostics: ArviZ conversion, netCDF I/O, log-Z / ESS checks and plots."""
from ppl.diagnostics.arviz import load_result, result_to_inference_data, save_result

__all__ = ["result_to_inference_data", "save_result", "load_result"]
