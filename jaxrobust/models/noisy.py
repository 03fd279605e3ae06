"""A randomised defence: Gaussian noise added to the input in every forward pass.

:class:`InputNoise` wraps a registered architecture and adds ``noise_std *
N(0, I)`` (pixel units, before the model's mean/std normalisation) to the
input in EVERY forward pass, evaluation included, with the pass's ``key``: the
randomised-input defence of Gaussian data augmentation / randomised smoothing
(Lecuyer et al. 2019; Cohen et al. 2019, "Certified adversarial robustness via
randomized smoothing", base classifier trained and queried under ``x + N(0,
sigma^2 I)``, sigma in {0.12, 0.25, 0.5} on CIFAR-10).

The module declares ``stochastic = True``: :meth:`jaxrobust.models.ModelFns.logits_fn`
then returns the keyed ``(x, key) -> logits`` form and every attack gives it a
fresh key per forward pass; AutoAttack's randomised-defence check flags it
(evaluate it with ``aa-rand``). Called without a key (``key=None``) it adds no
noise (the noise-free base classifier).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
from flax import nnx

from jaxrobust.models.small_cnn import SimpleCNN


class InputNoise(nnx.Module):
  """``base(x + noise_std * N(0, I))`` with fresh noise per call (a stochastic model).

  Args:
    base: constructor of the wrapped architecture (a :data:`jaxrobust.models.MODELS`
      entry); it receives every other argument.
    noise_std: standard deviation of the Gaussian input noise, pixel units
      (images in [0, 1]), >= 0.
    num_classes, in_channels, mean, std, dtype, rngs, **kwargs: passed to ``base``.

  Raises:
    ValueError: ``noise_std < 0``.
  """

  stochastic = True

  def __init__(self, base: Callable[..., nnx.Module], noise_std: float = 0.12, *,
               num_classes: int = 10, in_channels: int = 3, mean=None, std=None, dtype=None,
               rngs: nnx.Rngs, **kwargs):
    if not noise_std >= 0:
      raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    self.noise_std = float(noise_std)
    self.base = base(num_classes=num_classes, in_channels=in_channels, mean=mean, std=std,
                     dtype=dtype, rngs=rngs, **kwargs)

  def __call__(self, x, *, train: bool = False, key=None, **kwargs):
    """Logits float32 ``[B, K]`` of ``x`` float32 ``[B, H, W, C]`` in [0, 1] plus noise.

    ``key``: PRNG key of this pass (noise, then the base model's own
    randomness); None: no noise. Other keywords go to the base model.
    """
    base_key = None
    if key is not None:
      noise_key, base_key = jax.random.split(key)
      if self.noise_std > 0:
        x = x + self.noise_std * jax.random.normal(noise_key, x.shape, x.dtype)
    return self.base(x, train=train, key=base_key, **kwargs)


NOISY_MODELS = {
    "noisy_simple_cnn": functools.partial(InputNoise, SimpleCNN),
    "noisy_simple_cnn_tiny": functools.partial(
        InputNoise, functools.partial(SimpleCNN, widths=(8, 16), convs_per_stage=1)),
}
