"""Training protocol details of the official code: crop padding and the L2 random start.

Random-crop padding per method: reflect for PGD-AT / AT-AWP (Rice et al., AWP), else zeros.
PGD-AT / AT-AWP's L2 random start: uniform direction, radius U(0, 1) eps (``attack_pgd``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.attacks import attack_from_config
from jaxrobust.data.augment import random_crop_flip
from jaxrobust.data.pipeline import TrainIterator
from jaxrobust.data.sources import ArrayDataset
from jaxrobust.errors import ConfigError
from jaxrobust.methods import METHODS, method_config, official_pad_mode, register_method
from jaxrobust.train import default_config, resolve_config, validate_config

# The official code of each built-in method: AT_AWP/utils.py ``pad`` (np.pad reflect) for
# Rice et al.'s PGD-AT and AT-AWP; torchvision RandomCrop(32, padding=4) (zeros) for the rest.
OFFICIAL = {"standard": "constant", "pgd_at": "reflect", "fgsm_at": "constant",
            "trades": "constant", "mart": "constant", "awp": "reflect",
            "ard_distill": "constant", "iad": "constant", "rslad": "constant",
            "vit_pgd_at": "constant", "vit_trades": "constant", "vit_mart": "constant",
            # RegMixup (FrancescoPinto/RegMixup) and rotation SSL (hendrycks/ss-ood) use
            # torchvision RandomCrop(32, padding=4).
            "regmixup": "constant", "regmixup_at": "constant", "rotation_ssl": "constant",
            # RST (yaircarmon/semisup-adv: RandomCrop(32, padding=4)); UAT released no code:
            # zeros, as the other CIFAR-10 recipes.
            "rst": "constant", "uat_ot": "constant", "uat_ft": "constant"}


class _Offsets:
  """A stand-in generator: crop offsets ``dy``, ``dx`` (each ``[B]``), no flips."""

  def __init__(self, dy, dx):
    self._draws = [np.asarray(dy), np.asarray(dx)]

  def integers(self, low, high, size):
    del low, high, size
    return self._draws.pop(0)

  def random(self, size):
    return np.ones(size)


IMAGE = np.arange(1, 10, dtype=np.uint8).reshape(1, 3, 3, 1)  # [[1 2 3] [4 5 6] [7 8 9]]


def test_reflect_crop_by_hand():
  # pad 1, crop at the top-left corner: row -1 mirrors row 1, column -1 mirrors column 1.
  out = random_crop_flip(IMAGE, _Offsets([0], [0]), pad=1, flip=False, pad_mode="reflect")
  np.testing.assert_array_equal(out[0, :, :, 0], [[5, 4, 5], [2, 1, 2], [5, 4, 5]])
  out = random_crop_flip(IMAGE, _Offsets([0], [0]), pad=1, flip=False, pad_mode="constant")
  np.testing.assert_array_equal(out[0, :, :, 0], [[0, 0, 0], [0, 1, 2], [0, 4, 5]])
  out = random_crop_flip(IMAGE, _Offsets([2], [1]), pad=1, flip=False, pad_mode="reflect")
  np.testing.assert_array_equal(out[0, :, :, 0], [[4, 5, 6], [7, 8, 9], [4, 5, 6]])


@pytest.mark.parametrize("dy,dx", [(0, 0), (4, 4), (1, 3), (4, 0)])
def test_reflect_crop_equals_numpy_pad_window(dy, dx):
  x = np.random.default_rng(0).integers(0, 256, (2, 5, 6, 3)).astype(np.uint8)
  out = random_crop_flip(x, _Offsets([dy, dx], [dx, dy]), pad=2, flip=False,
                         pad_mode="reflect")
  for i, (oy, ox) in enumerate([(dy, dx), (dx, dy)]):
    padded = np.pad(x[i], ((2, 2), (2, 2), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(out[i], padded[oy:oy + 5, ox:ox + 6])


def test_every_builtin_method_has_its_official_padding():
  assert set(OFFICIAL) == set(METHODS)
  for name, want in OFFICIAL.items():
    assert official_pad_mode(method_config(name)) == want, name
  # AWP's padding follows its base: AT_AWP reflects, trades_AWP pads with zeros.
  assert official_pad_mode(method_config("awp", awp_base="trades")) == "constant"


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_unset_pad_mode_resolves_to_the_method_and_a_set_one_is_kept(name):
  c = default_config()
  c.method = method_config(name)
  assert c.data.pad_mode == ""  # unset: the method decides.
  assert resolve_config(c).data.pad_mode == OFFICIAL[name]
  other = "constant" if OFFICIAL[name] == "reflect" else "reflect"
  c.data.pad_mode = other  # the named option.
  assert resolve_config(c).data.pad_mode == other


def test_bad_pad_mode_is_refused():
  c = default_config()
  c.data.pad_mode = "edge"
  with pytest.raises(ConfigError, match="config.data.pad_mode='edge'"):
    validate_config(c)
  with pytest.raises(ConfigError, match="pad_mode must be one of"):
    register_method("bad_pad", build=lambda s, ctx: None, pad_mode="wrap")


def test_training_batches_of_pgd_at_pad_with_reflection():
  # The iterator the trainer builds from the resolved config: every crop of a PGD-AT batch is a
  # window of the reflect-padded image (not of the zero-padded one), and TRADES's of the zeros.
  x = np.random.default_rng(1).integers(1, 256, (64, 6, 6, 3)).astype(np.uint8)
  data = ArrayDataset(x, np.zeros(64, np.int32), np.ones(64, bool))
  for name in ("pgd_at", "trades"):
    c = default_config()
    c.method = method_config(name)
    r = resolve_config(c)
    it = TrainIterator(data, 64, seed=0, pad=2, pad_mode=r.data.pad_mode, flip=False)
    batch = next(it)
    idx = np.sort(np.random.default_rng([0, 0]).permutation(64))
    for img, out in zip(x[idx], batch["image"]):
      padded = np.pad(img, ((2, 2), (2, 2), (0, 0)), mode=OFFICIAL[name])
      wins = [padded[a:a + 6, b:b + 6] for a in range(5) for b in range(5)]
      assert any(np.array_equal(w, out) for w in wins)
    assert (batch["image"] == 0).any() == (name == "trades")  # pixels are >= 1


@pytest.mark.parametrize("name,cfg", [("pgd_at", {}), ("awp", {"awp_base": "pgd_at"})])
def test_l2_training_attack_of_pgd_at_starts_at_radius_uniform_in_0_eps(name, cfg):
  c = default_config()
  c.method = method_config(name, **cfg)
  c.norm, c.eps = "l2", 0.5
  attack = dict(resolve_config(c).method.attack)
  assert attack["random_start"] == "uniform_radius" and attack["norm"] == "l2"
  # A negligible step: x_adv - x is the random start (x = 0.5 stays inside [0, 1]).
  attack.update(num_steps=1, step_size=1e-7)
  n = 2000
  x = jnp.full((n, 4, 4, 3), 0.5, jnp.float32)
  w = jnp.ones((48, 10), jnp.float32)
  x_adv = attack_from_config(attack)(lambda v: v.reshape(v.shape[0], -1) @ w,
                                     jax.random.PRNGKey(0), x, jnp.zeros(n, jnp.int32))
  r = np.linalg.norm(np.asarray(x_adv - x).reshape(n, -1), axis=1)
  assert abs(r.mean() / 0.5 - 0.5) < 0.03  # uniform in the 48-D ball would give 48/49.
  assert abs(np.mean(r <= 0.25) - 0.5) < 0.04


def test_iad_teacher_config_is_iads_pre_train_at_recipe():
  # ZFancy/IAD:pre_train/AT.py defaults: ResNet-18 on [0, 1] inputs, PGD-10 (2/255, 8/255,
  # uniform start) with model.eval(), wd 2e-4, SGD(0.9) lr 0.1, 200 epochs, batch 128, lr set
  # per epoch to lr_schedule(epoch + 1): x0.1 from 0-indexed epoch 99, again from 149;
  # torchvision RandomCrop(32, padding=4) (zeros).
  from tests.train.helpers import load_config  # pylint: disable=g-import-not-at-top
  c = resolve_config(load_config("cifar10_iad_teacher"))
  assert (c.model.name, c.model.normalize) == ("resnet18", "none")
  assert c.method.name == "pgd_at" and c.method.attack_bn == "eval"
  a = c.method.attack
  assert (a.name, a.num_steps, a.loss, a.random_start) == ("pgd", 10, "ce", "uniform")
  np.testing.assert_allclose([a.eps, a.step_size], [8 / 255, 2 / 255])
  assert c.data.pad_mode == "constant" and c.data.pad == 4 and c.data.flip
  t = c.train
  assert (t.batch_size, t.num_epochs, t.lr, t.momentum, t.weight_decay) == (128, 200, 0.1, 0.9,
                                                                            2e-4)
  assert t.schedule == "piecewise" and tuple(t.scales) == (0.1, 0.1)
  np.testing.assert_allclose(np.asarray(t.boundaries) * 200, [99, 149])
  # The IAD student config points at this recipe.
  from tests.train.helpers import REPO  # pylint: disable=g-import-not-at-top
  assert "cifar10_iad_teacher.py" in (REPO / "configs" / "cifar10_iad.py").read_text()
