"""BatchNorm policy with ``attack_bn_updates='none'``: attack passes never update running statistics.

The default (``'official'``: PyTorch's per-pass updates in a train-mode attack) is tested in
``test_attack_bn_updates.py``; an eval-view attack updates nothing under either.
"""
import jax
import numpy as np
import pytest

from jaxrobust.data import to_float
from jaxrobust.methods import ModelFns, method_from_config
from jaxrobust.models import create_model
from jaxrobust.train import create_train_state, default_config, make_optimizer, make_train_step


@pytest.mark.parametrize("attack_bn", ["train", "eval"])
def test_running_stats_updated_once_by_the_training_forward_pass(attack_bn):
  tx = make_optimizer(default_config().train, 10, 10)
  graphdef, state = create_train_state(create_model("resnet_tiny"), tx, seed=0)
  fns = ModelFns(graphdef)
  method = method_from_config(dict(
      name="pgd_at", attack=dict(name="pgd", eps=8 / 255, step_size=2 / 255, num_steps=3),
      attack_bn=attack_bn), attack_bn_updates="none")
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
           "label": rng.integers(0, 10, 8).astype(np.int32)}
  new_state, _ = jax.jit(make_train_step(fns, method, tx))(state, batch)

  # Recompute x_adv with the step's key, then one train-mode forward from the old stats.
  key = jax.random.fold_in(state.rng, state.step)
  x = to_float(batch["image"])
  x_adv = method.perturb(fns, state.params, state.batch_stats, x, batch["label"], key)
  _, expected = fns.apply(state.params, state.batch_stats, x_adv, train=True)
  for a, b in zip(jax.tree.leaves(new_state.batch_stats), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  # And they did change (the training pass updates them).
  assert not np.allclose(jax.tree.leaves(new_state.batch_stats)[0],
                         jax.tree.leaves(state.batch_stats)[0])
  if attack_bn == "eval":  # the default builds the same method: eval-view passes update nothing.
    default = method_from_config(dict(
        name="pgd_at", attack=dict(name="pgd", eps=8 / 255, step_size=2 / 255, num_steps=3),
        attack_bn=attack_bn))
    assert type(default) is type(method)


def test_eval_view_attack_is_batch_independent_and_train_view_is_not():
  graphdef, state = create_train_state(create_model("resnet_tiny"),
                                       make_optimizer(default_config().train, 10, 10), 0)
  fns = ModelFns(graphdef)
  x = np.random.default_rng(1).random((4, 32, 32, 3)).astype(np.float32)
  ev = fns.logits_fn(state.params, state.batch_stats, bn="eval")
  tr = fns.logits_fn(state.params, state.batch_stats, bn="train")
  np.testing.assert_allclose(ev(x)[:1], ev(x[:1]), rtol=1e-5, atol=1e-6)
  assert not np.allclose(tr(x)[:2], tr(x[:2]), atol=1e-4)
