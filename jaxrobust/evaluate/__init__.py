"""Evaluation: AutoAttack, the evaluation suite and report, the evaluation CLI.

``run_autoattack`` / ``AutoAttackSettings`` run AutoAttack (Croce & Hein 2020)
with the reference semantics; ``evaluate_names`` evaluates a restored run
under named evaluations (``clean``, ``pgd20``, ``aa-standard``, ...). The
accuracy-under-attack primitives live in :mod:`jaxrobust.accuracy` (shared with
the trainer) and are re-exported here.
"""
from jaxrobust.accuracy import (attacks_from_config, evaluate_accuracy, evaluate_model,
                                exact_subset, make_eval_step)
from jaxrobust.evaluate.autoattack import (AutoAttackResult, AutoAttackSettings,
                                           run_autoattack)
from jaxrobust.evaluate.report import evaluate_names
from jaxrobust.evaluate.suite import DEFAULT_SUITE, suite_attacks

__all__ = ["AutoAttackResult", "AutoAttackSettings", "DEFAULT_SUITE", "attacks_from_config",
           "evaluate_accuracy", "evaluate_model", "evaluate_names", "exact_subset",
           "make_eval_step", "run_autoattack", "suite_attacks"]
