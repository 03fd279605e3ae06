"""Models with NumPy-drawn weights, for fast tests.

Shapes come from ``nnx.eval_shape`` and values from NumPy: eager Flax
initialisation compiles one ``jax.random`` initialiser per parameter shape,
which dominates a test file's run time on a 2-core CPU.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrobust.methods import ModelFns
from jaxrobust.models import create_model
from jaxrobust.train import split_model


def numpy_initialised(name: str = "simple_cnn_tiny", seed: int = 0, **kwargs):
  """``(ModelFns, params, batch_stats)`` of registry model ``name``.

  He-normal kernels; BatchNorm scales 1 + 0.1 N(0, 1), biases and running means
  0.1 N(0, 1), running variances U(0.5, 1.5), all from ``default_rng(seed)``.
  """
  abstract = nnx.eval_shape(lambda: create_model(name, **kwargs))
  graphdef, params, batch_stats = split_model(abstract)
  gen = np.random.default_rng(seed)

  def fill(path, leaf):
    key = str(path[-2])
    if "kernel" in key:
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(gen.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in), leaf.dtype)
    if "var" in key:
      return jnp.asarray(gen.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    return jnp.asarray((1.0 if "scale" in key else 0.0) + 0.1 * gen.normal(size=leaf.shape),
                       leaf.dtype)

  params = jax.tree_util.tree_map_with_path(fill, params)
  batch_stats = jax.tree_util.tree_map_with_path(fill, batch_stats)
  return ModelFns(graphdef), params, batch_stats
