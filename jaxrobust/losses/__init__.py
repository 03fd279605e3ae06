"""Robust-training objectives as pure functions of logits.

Each loss reproduces its official code base term for term: the KL reduction,
the constants, and which logits receive gradients (clean branches are NOT
detached where the official code does not detach them; teacher outputs are
always ``stop_gradient``-ed). The methods in :mod:`jaxrobust.methods` decide
which forward pass (BatchNorm view) produces each logit array.

==================  =================  ==========================================
loss                KL reduction       source
==================  =================  ==========================================
:func:`trades_loss` batchmean          ``yaodongyu/TRADES:trades.py``
:func:`mart_loss`   per-sample / B     ``YisenWang/MART:mart.py``
:func:`ard_loss`    mean over B*C      ``goldblum/AdversariallyRobustDistillation:main.py``
:func:`iad_loss`    per-sample / B     ``ZFancy/IAD:IAD-I.py, IAD-II.py``
:func:`rslad_loss`  mean over B*C      ``zibojia/RSLAD:resnet18_rslad_cifar10.py``
==================  =================  ==========================================
"""
from jaxrobust.losses._distill import ard_loss, iad_loss, iad_trust, rslad_loss
from jaxrobust.losses._kl import (REDUCTIONS, cross_entropy, kl_divergence, reduce_elementwise,
                                  soft_target_cross_entropy)
from jaxrobust.losses._mart import mart_loss, mart_misclassified_class
from jaxrobust.losses._trades import trades_loss

__all__ = ["REDUCTIONS", "ard_loss", "cross_entropy", "iad_loss", "iad_trust",
           "kl_divergence", "mart_loss", "mart_misclassified_class", "reduce_elementwise",
           "rslad_loss", "soft_target_cross_entropy", "trades_loss"]
