"""Weight-space tools: interpolation (WiSE-FT), model soups, SWA, Fisher merging, BN recalibration.

Pure functions over parameter trees (``nnx.State`` of parameters and of
BatchNorm statistics):

* :func:`interpolate`, :func:`sweep`, :func:`select_alpha` /
  :data:`SELECTION_RULES` -- ``theta(alpha) = (1 - alpha) theta_0 + alpha
  theta_1`` (WiSE-FT; RiFT's interpolation uses these).
* :func:`uniform_soup`, :func:`greedy_soup` -- model soups (Wortsman et al. 2022).
* :func:`diagonal_fisher`, :func:`fisher_merge`, :func:`weighted_mean` --
  Fisher-weighted averaging (Matena & Raffel 2022).
* :func:`swa_learning_rate`, :func:`swa_schedule`, :class:`SWAState`,
  :func:`swa_init`, :func:`swa_update`, :func:`collects_after_epoch` -- SWA
  (Izmailov et al. 2018).
* :func:`recompute_batch_stats` -- BatchNorm statistics recomputed for given
  weights (cumulative average over one pass, clean or adversarial inputs).
* :func:`ema_decay_for_batch_size` -- the EMA decay rescaled to a batch size.
* :func:`reinit_weights`, :func:`reinit_leaves`, :func:`fresh_weights` --
  chosen modules re-initialised (Zhang, Bengio & Singer 2022), the rest kept;
  :func:`reinit_analysis` / :func:`reinit_table` -- every module in turn
  (:func:`list_modules`, :func:`replace_module`).
* :func:`plot_interpolation`, :func:`plot_reinit` (:mod:`jaxrobust.weights.plots`).

Runs in, workdirs out (:mod:`jaxrobust.weights.recipes`)::

    python -m jaxrobust.weights soup --workdirs A B C --select val_robust --out DIR
    python -m jaxrobust.weights interpolate --from A --to B --alphas 0:1:0.1 --out DIR
    python -m jaxrobust.weights recalibrate --workdirs A --bn recompute_clean --out DIR
    python -m jaxrobust.weights reinit --workdirs A --modules '^linear' --out DIR
    python -m jaxrobust.weights reinit_analysis --workdirs A --out DIR

SWA during training is ``config.train.swa_start`` (:mod:`jaxrobust.train.swa`;
the trainer writes the average as ``<workdir>/swa``).

Each writes a workdir that ``python -m jaxrobust.evaluate --workdir DIR``
reads like a trained run.
"""
from jaxrobust.train.state import ema_decay_for_batch_size
from jaxrobust.train.bn import recompute_batch_stats
from jaxrobust.weights.merge import (SELECTION_RULES, check_compatible, diagonal_fisher,
                                     fisher_merge, greedy_soup, interpolate, parse_alphas,
                                     select_alpha, select_max, sweep, uniform_soup,
                                     weighted_mean)
from jaxrobust.weights.modules import Module, list_modules, module_regex, replace_module
from jaxrobust.weights.plots import plot_interpolation, plot_reinit
from jaxrobust.weights.reinit import (REINIT_MODES, fresh_weights, reinit_analysis,
                                      reinit_leaves, reinit_table, reinit_weights)
from jaxrobust.train.swa import (SWAState, collects_after_epoch, swa_init, swa_learning_rate,
                                   swa_schedule, swa_update)

__all__ = ["Module", "REINIT_MODES", "SELECTION_RULES", "SWAState", "check_compatible",
           "collects_after_epoch", "diagonal_fisher", "ema_decay_for_batch_size",
           "fisher_merge", "fresh_weights", "greedy_soup", "interpolate", "list_modules",
           "module_regex", "parse_alphas", "plot_interpolation", "plot_reinit",
           "recompute_batch_stats", "reinit_analysis", "reinit_leaves", "reinit_table",
           "reinit_weights", "replace_module", "select_alpha",
           "select_max", "swa_init", "swa_learning_rate", "swa_schedule", "swa_update", "sweep",
           "uniform_soup", "weighted_mean"]
