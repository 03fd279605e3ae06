"""Module robust criticality (MRC), RiFT's nested maximisation (Zhu et al., ICCV 2023).

For a module with weights ``w`` and a fixed adversarial set ``D' = {(x', y)}``::

    MRC(w) = max_{||dw||_F <= xi ||w||_F}  L(w + dw; D') - L(w; D')

with ``L`` the mean cross-entropy (RiFT paper, Eq. 3-4). The official code
(``microsoft/robustlearn:RiFT/main.py``, ``layer_sharpness``) approximates the
max by ``num_epochs`` epochs of SGD (lr 1, no momentum, no weight decay,
shuffled batches of 512) on ``-CE`` over ``D'`` with only that module's weight
trainable and BatchNorm in eval mode; after every epoch it rescales ``dw`` onto
the ball when ``||dw|| / ||w|| > xi`` (``xi = 0.1``), evaluates the loss over
``D'`` and keeps the largest loss (and the robust accuracy at that point).
The result is ``max loss - original loss``; a negative value is possible (the
official running max starts at 0, which no cross-entropy reaches, so the two
agree).

Implementation: one jitted function per distinct kernel *shape* runs the whole
inner maximisation (epochs x batches in ``lax`` loops, the adversarial set on
device). The module inside a shape group is a traced integer, so a sweep over
all modules compiles once per shape, not once per module.

Deliberate differences from the official code: the adversarial set is built
from the validation split by default (the official code uses the test split;
``split='test'`` reproduces it) with PGD step 2/255 (the official 2/225 is a
typo); ``project='step'`` (projection after every SGD step, as a PGD on the
weights) is offered besides the official ``'epoch'``.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from jaxrobust.attacks import attack_from_config
from jaxrobust.data import ArrayDataset, eval_batches, to_float
from jaxrobust.errors import ConfigError
from jaxrobust.methods.base import ModelFns
from jaxrobust.rift.modules import Module


@dataclasses.dataclass(frozen=True)
class MRCSettings:
  """Settings of the inner maximisation (official defaults).

  Attributes:
    xi: relative Frobenius radius of the weight perturbation (0.1).
    num_epochs: ascent epochs over the adversarial set (10).
    step_size: SGD learning rate of the ascent on the mean CE (1.0).
    batch_size: ascent batch size (512).
    project: ``'epoch'`` (official: rescale after each epoch) or ``'step'``.
    shuffle: reshuffle the adversarial set every epoch (official: True).
  """
  xi: float = 0.1
  num_epochs: int = 10
  step_size: float = 1.0
  batch_size: int = 512
  project: str = "epoch"
  shuffle: bool = True

  def validate(self) -> None:
    if not self.xi >= 0:
      raise ConfigError(f"mrc.xi must be >= 0 (relative weight radius), got {self.xi}")
    if self.num_epochs < 1 or self.batch_size < 1:
      raise ConfigError("mrc.num_epochs and mrc.batch_size must be >= 1")
    if not self.step_size > 0:
      raise ConfigError(f"mrc.step_size must be > 0, got {self.step_size}")
    if self.project not in ("epoch", "step"):
      raise ConfigError(f"mrc.project={self.project!r}; use 'epoch' (official) or 'step'")


@dataclasses.dataclass(frozen=True)
class ModuleCriticality:
  """MRC of one module.

  Attributes:
    name: module name (``Module.name``).
    shape: kernel shape.
    mrc: max robust loss - original robust loss (mean CE, nats).
    max_loss: the largest robust loss found.
    base_loss: robust loss of the unperturbed model.
    robust_acc: robust accuracy on the adversarial set at ``max_loss``.
    base_acc: robust accuracy of the unperturbed model.
    acc_drop: ``base_acc - robust_acc`` (the official "dropped robust acc").
    rel_norm: ``||dw||_F / ||w||_F`` of the final perturbation.
    seconds: wall time of this module (the first of a shape includes compilation).
  """
  name: str
  shape: tuple
  mrc: float
  max_loss: float
  base_loss: float
  robust_acc: float
  base_acc: float
  acc_drop: float
  rel_norm: float
  seconds: float

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["shape"] = list(self.shape)
    return d


def build_adversarial_set(model: ModelFns, params, batch_stats, dataset: ArrayDataset,
                          attack_cfg, batch_size: int, rng: jax.Array
                          ) -> tuple[np.ndarray, np.ndarray]:
  """The fixed adversarial set of MRC: one attack on every example, eval-mode BN.

  Args:
    model, params, batch_stats: the adversarially trained model.
    dataset: uint8 images (e.g. the validation split).
    attack_cfg: attack config, e.g. PGD-10 eps 8/255 step 2/255 uniform start.
    batch_size: attack batch size.
    rng: PRNG key (batch ``i`` uses ``fold_in(rng, i)``).

  Returns:
    ``(x_adv float32 [N, H, W, C] in [0, 1], y int32 [N])`` as host arrays.
  """
  attack = attack_from_config(attack_cfg)

  @jax.jit
  def run(images, labels, key):
    x = to_float(images)
    return attack(model.logits_fn(params, batch_stats, bn="eval"), key, x, labels)

  out = []
  for i, batch in enumerate(eval_batches(dataset, batch_size)):
    x_adv = run(batch["image"], batch["label"].astype(np.int32), jax.random.fold_in(rng, i))
    out.append(np.asarray(x_adv)[batch["mask"] > 0])
  return np.concatenate(out), dataset.labels.astype(np.int32)


def _ce_sum_and_correct(model: ModelFns, params, batch_stats, x, y, mask):
  logits = model.apply(params, batch_stats, x, train=False)[0].astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, -1)
  ce = -jnp.take_along_axis(logp, y[:, None], -1)[:, 0]
  correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
  return jnp.sum(ce * mask), jnp.sum(correct * mask)


def _project(delta, w_norm, xi):
  """The official rescaling: ``dw * xi / r`` when ``r = ||dw|| / ||w|| > xi``."""
  ratio = jnp.sqrt(jnp.sum(jnp.square(delta))) / w_norm
  return jnp.where(ratio > xi, delta * (xi / ratio), delta)


def make_group_maximizer(model: ModelFns, params, members: Sequence[Module], n: int,
                         settings: MRCSettings) -> Callable:
  """The jitted inner maximisation for modules that share one kernel shape.

  Args:
    model: functional model.
    params: the parameter pytree (only its structure is used here).
    members: modules with equal ``shape``; the traced ``index`` argument of
      the returned function picks one.
    n: number of examples of the adversarial set.
    settings: :class:`MRCSettings`.

  Returns:
    ``maximize(params, batch_stats, index, x_adv, y, key) -> dict`` of float32
    scalars ``max_loss, acc_at_max, base_loss, base_acc, rel_norm`` (jitted;
    ``x_adv`` float32 ``[n, H, W, C]``, ``y`` int32 ``[n]``).
  """
  shapes = {m.shape for m in members}
  if len(shapes) != 1:
    raise ValueError(f"modules of one group must share a kernel shape, got {shapes}")
  treedef = jax.tree.structure(params)
  leaf_ids = [m.leaf_index for m in members]
  bs = min(settings.batch_size, n)
  nb = math.ceil(n / bs)
  pad = nb * bs - n
  mask_all = jnp.concatenate([jnp.ones((n,), jnp.float32), jnp.zeros((pad,), jnp.float32)])
  mask_b = mask_all.reshape(nb, bs)
  counts = jnp.maximum(jnp.sum(mask_b, 1), 1.0)

  def perturbed(leaves, index, delta):
    new = list(leaves)
    for k, li in enumerate(leaf_ids):
      new[li] = leaves[li] + jnp.where(index == k, delta, jnp.zeros_like(delta))
    return jax.tree.unflatten(treedef, new)

  def batched(x, y, order):
    xs = jnp.concatenate([x[order], jnp.zeros((pad,) + x.shape[1:], x.dtype)])
    ys = jnp.concatenate([y[order], jnp.zeros((pad,), y.dtype)])
    return xs.reshape((nb, bs) + x.shape[1:]), ys.reshape(nb, bs)

  def maximize(params, batch_stats, index, x, y, key):
    leaves = jax.tree.leaves(params)
    w = jnp.stack([leaves[li] for li in leaf_ids])[index]
    w_norm = jnp.sqrt(jnp.sum(jnp.square(w)))
    xb_fixed, yb_fixed = batched(x, y, jnp.arange(n))

    def evaluate(delta):
      p = perturbed(leaves, index, delta)

      def body(i, acc):
        s, c = _ce_sum_and_correct(model, p, batch_stats, xb_fixed[i], yb_fixed[i], mask_b[i])
        return acc[0] + s, acc[1] + c

      s, c = jax.lax.fori_loop(0, nb, body, (jnp.float32(0), jnp.float32(0)))
      return s / n, c / n

    def epoch(e, carry):
      delta, max_loss, acc_at_max = carry
      order = (jax.random.permutation(jax.random.fold_in(key, e), n) if settings.shuffle
               else jnp.arange(n))
      xb, yb = batched(x, y, order)

      def step(i, delta):
        def mean_ce(d):
          s, _ = _ce_sum_and_correct(model, perturbed(leaves, index, d), batch_stats, xb[i],
                                     yb[i], mask_b[i])
          return s / counts[i]

        # SGD (lr = step_size) on -CE: the weight moves up the CE gradient.
        delta = delta + settings.step_size * jax.grad(mean_ce)(delta)
        if settings.project == "step":
          delta = _project(delta, w_norm, settings.xi)
        return delta

      delta = jax.lax.fori_loop(0, nb, step, delta)
      delta = _project(delta, w_norm, settings.xi)
      loss, acc = evaluate(delta)
      better = loss > max_loss
      return delta, jnp.where(better, loss, max_loss), jnp.where(better, acc, acc_at_max)

    base_loss, base_acc = evaluate(jnp.zeros_like(w))
    init = (jnp.zeros_like(w), jnp.float32(0), jnp.float32(0))  # official: max_loss = 0.
    delta, max_loss, acc_at_max = jax.lax.fori_loop(0, settings.num_epochs, epoch, init)
    rel = jnp.sqrt(jnp.sum(jnp.square(delta))) / w_norm
    return dict(max_loss=max_loss, acc_at_max=acc_at_max, base_loss=base_loss,
                base_acc=base_acc, rel_norm=rel)

  return jax.jit(maximize)


def mrc_sweep(model: ModelFns, params, batch_stats, x_adv, y, modules: Sequence[Module],
              settings: MRCSettings = MRCSettings(), rng: jax.Array | None = None,
              progress: bool = True) -> list[ModuleCriticality]:
  """MRC of every module in ``modules`` over the fixed adversarial set.

  Args:
    model, params, batch_stats: the adversarially trained model (eval-mode BN).
    x_adv: float32 ``[N, H, W, C]`` adversarial images in [0, 1].
    y: int ``[N]`` true labels.
    modules: from :func:`jaxrobust.rift.modules.list_modules`.
    settings: :class:`MRCSettings`.
    rng: PRNG key of the per-epoch shuffles (module ``j`` uses ``fold_in(rng, j)``).
    progress: show a progress bar.

  Returns:
    One :class:`ModuleCriticality` per module, in the order of ``modules``.

  Raises:
    ConfigError: invalid settings or an empty adversarial set.
  """
  settings.validate()
  n = int(np.shape(y)[0])
  if n == 0 or np.shape(x_adv)[0] != n:
    raise ConfigError(f"the adversarial set is empty or its images ({np.shape(x_adv)[0]}) and "
                      f"labels ({n}) differ in number")
  rng = jax.random.PRNGKey(0) if rng is None else rng
  x_adv = jnp.asarray(x_adv, jnp.float32)
  y = jnp.asarray(y, jnp.int32)
  groups: dict[tuple, list[Module]] = {}
  for m in modules:
    groups.setdefault(m.shape, []).append(m)
  fns = {shape: make_group_maximizer(model, params, mods, n, settings)
         for shape, mods in groups.items()}
  results = {}
  bar = tqdm.tqdm(total=len(modules), desc="MRC", disable=not progress, leave=False)
  for j, m in enumerate(modules):
    members = groups[m.shape]
    t0 = time.time()
    out = jax.device_get(fns[m.shape](params, batch_stats, members.index(m), x_adv, y,
                                      jax.random.fold_in(rng, j)))
    base_loss, base_acc = float(out["base_loss"]), float(out["base_acc"])
    max_loss, acc = float(out["max_loss"]), float(out["acc_at_max"])
    results[m.name] = ModuleCriticality(
        m.name, m.shape, max_loss - base_loss, max_loss, base_loss, acc, base_acc,
        base_acc - acc, float(out["rel_norm"]), time.time() - t0)
    bar.update(1)
  bar.close()
  return [results[m.name] for m in modules]


def least_critical(results: Sequence[ModuleCriticality]) -> ModuleCriticality:
  """The module with the lowest MRC (RiFT fine-tunes this one)."""
  return min(results, key=lambda r: r.mrc)
