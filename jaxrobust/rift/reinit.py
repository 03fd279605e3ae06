"""Layer re-initialisation analysis for RiFT: :func:`jaxrobust.weights.reinit_analysis`.

("Are all layers created equal?", Zhang, Bengio & Singer, JMLR 2022.) For each
module, the trained weights under its path (kernel and bias) are replaced by
their values at initialisation (*re-initialisation*) or by a fresh random draw
from the same initialiser (*re-randomisation*), everything else kept, and the
model's clean and robust accuracy are measured. The analysis lives in
:mod:`jaxrobust.weights.reinit` (standalone CLI ``python -m jaxrobust.weights
reinit_analysis``); RiFT's pipeline runs it as its stage 2.
"""
from jaxrobust.weights.reinit import REINIT_MODES as MODES
from jaxrobust.weights.reinit import reinit_analysis

__all__ = ["MODES", "reinit_analysis"]
