"""Evaluation: accuracy under named attacks, and the evaluation CLI."""
from jaxrobust.evaluate.evaluators import (attacks_from_config, evaluate_accuracy,
                                           evaluate_model, exact_subset, make_eval_step)

__all__ = ["attacks_from_config", "evaluate_accuracy", "evaluate_model", "exact_subset", "make_eval_step"]
