"""Example and benchmark models, each with its data and its ground truth, listed in a registry."""
from ppl.models.base import GroundTruth, ModelSpec, get_model, list_models, register_model

# Importing a model module registers its ModelSpec(s).
from ppl.models import eight_schools, lgssm, logistic_regression, normal_normal, posteriordb, char_lm, vi_models  # noqa: E402,F401

__all__ = ["GroundTruth", "ModelSpec", "get_model", "list_models", "register_model"]
