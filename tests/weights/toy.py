"""A toy BatchNorm network whose statistics and gradients are computed by hand in the tests."""
import jax
import jax.numpy as jnp
from flax import nnx

from jaxrobust.models import ModelFns
from jaxrobust.train.state import split_model


class ToyBN(nnx.Module):
  """x [B, 3] -> Linear(4) -> BN -> relu -> Linear(3) -> BN -> relu -> Linear(K) logits."""

  def __init__(self, num_classes: int = 3, seed: int = 0):
    rngs = nnx.Rngs(seed)
    self.l1 = nnx.Linear(3, 4, rngs=rngs)
    self.bn1 = nnx.BatchNorm(4, momentum=0.9, epsilon=1e-5, rngs=rngs)
    self.l2 = nnx.Linear(4, 3, rngs=rngs)
    self.bn2 = nnx.BatchNorm(3, momentum=0.9, epsilon=1e-5, rngs=rngs)
    self.head = nnx.Linear(3, num_classes, rngs=rngs)

  def __call__(self, x, train: bool = False, key=None, return_features: bool = False):
    del key
    h = jax.nn.relu(self.bn1(self.l1(x), use_running_average=not train))
    h = jax.nn.relu(self.bn2(self.l2(h), use_running_average=not train))
    logits = self.head(h)
    return (logits, h) if return_features else logits


def toy(seed: int = 0, num_classes: int = 3):
  """``(ModelFns, params, batch_stats)`` of :class:`ToyBN`."""
  graphdef, params, batch_stats = split_model(ToyBN(num_classes, seed))
  return ModelFns(graphdef), params, batch_stats


def leaves(tree):
  return [jnp.asarray(x) for x in jax.tree.leaves(tree)]
