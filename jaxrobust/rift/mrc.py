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

Implementation: per distinct kernel *shape*, one jitted program runs an ascent
epoch over the whole adversarial set (on device) and one evaluates it; the
module inside a shape group is a traced integer, so a sweep over all modules
compiles once per shape, not once per module (see
:func:`make_group_maximizer` for why epochs are a host loop).

Deliberate differences from the official code: under the default
(validation) protocol the adversarial set is built from the validation split
(the official code uses the whole test split, ``main.py:28``; the pipeline's
``mrc.split='test'`` and ``protocol='official'`` reproduce it) with PGD step
2/255 (the official ``alpha=2/225`` is a typo); ``project='step'``
(projection after every SGD step, as a PGD on the weights) is offered besides
the official ``'epoch'``.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from jaxrobust.attacks import attack_from_config
from jaxrobust.data import ArrayDataset, eval_batches, to_float
from jaxrobust.errors import ConfigError
from jaxrobust.models import ModelFns
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

  @classmethod
  def from_dict(cls, d: Mapping) -> "ModuleCriticality":
    """The inverse of :meth:`to_dict`."""
    return cls(**dict(d, shape=tuple(d["shape"])))


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
  """The inner maximisation for modules that share one kernel shape.

  Two jitted programs do the work: ``evaluate`` (loss and accuracy over the
  adversarial set) and ``epoch`` (one shuffled pass of SGD ascent on the
  weight perturbation, the projection, the evaluation and the running max).
  The batches of a pass are straight-line code inside each program and the
  epochs are a host loop that only dispatches (the carry stays on device, no
  host sync until the caller reads the result): XLA:CPU runs convolution
  gradients inside a ``while`` body on a slow generic path, which made the
  ``fori_loop`` form of this function several times slower.

  Args:
    model: functional model.
    params: the parameter pytree (only its structure is used here).
    members: modules with equal ``shape``; the traced ``index`` argument of
      the returned function picks one.
    n: number of examples of the adversarial set.
    settings: :class:`MRCSettings`.

  Returns:
    ``maximize(params, batch_stats, index, x_adv, y, key) -> dict`` of float32
    scalars ``max_loss, acc_at_max, base_loss, base_acc, rel_norm``
    (``x_adv`` float32 ``[n, H, W, C]``, ``y`` int32 ``[n]``). Its attribute
    ``jitted`` holds the two jitted programs (each compiles once per group).
  """
  shapes = {m.shape for m in members}
  if len(shapes) != 1:
    raise ValueError(f"modules of one group must share a kernel shape, got {shapes}")
  treedef = jax.tree.structure(params)
  leaf_ids = [m.leaf_index for m in members]
  bs = min(settings.batch_size, n)
  nb = math.ceil(n / bs)
  bounds = [(i * bs, min(n, (i + 1) * bs)) for i in range(nb)]

  def perturbed(leaves, index, delta):
    new = list(leaves)
    for k, li in enumerate(leaf_ids):
      new[li] = leaves[li] + jnp.where(index == k, delta, jnp.zeros_like(delta))
    return jax.tree.unflatten(treedef, new)

  def selected(params, index):
    leaves = jax.tree.leaves(params)
    w = jnp.stack([leaves[li] for li in leaf_ids])[index]
    return leaves, w, jnp.sqrt(jnp.sum(jnp.square(w)))

  def loss_and_acc(leaves, batch_stats, index, delta, x, y):
    p = perturbed(leaves, index, delta)
    s = c = jnp.float32(0)
    for lo, hi in bounds:  # the last batch may be smaller, as a DataLoader's.
      ds, dc = _ce_sum_and_correct(model, p, batch_stats, x[lo:hi], y[lo:hi],
                                   jnp.ones((hi - lo,), jnp.float32))
      s, c = s + ds, c + dc
    return s / n, c / n

  @jax.jit
  def evaluate(params, batch_stats, index, x, y):
    leaves, w, _ = selected(params, index)
    return loss_and_acc(leaves, batch_stats, index, jnp.zeros_like(w), x, y)

  @jax.jit
  def epoch(params, batch_stats, index, x, y, key, delta, max_loss, acc_at_max):
    leaves, _, w_norm = selected(params, index)
    if settings.shuffle:
      order = jax.random.permutation(key, n)
      xs, ys = x[order], y[order]
    else:
      xs, ys = x, y
    for lo, hi in bounds:
      def mean_ce(d, lo=lo, hi=hi):
        s, _ = _ce_sum_and_correct(model, perturbed(leaves, index, d), batch_stats,
                                   xs[lo:hi], ys[lo:hi], jnp.ones((hi - lo,), jnp.float32))
        return s / (hi - lo)

      # SGD (lr = step_size) on -CE: the weight moves up the CE gradient.
      delta = delta + settings.step_size * jax.grad(mean_ce)(delta)
      if settings.project == "step":
        delta = _project(delta, w_norm, settings.xi)
    delta = _project(delta, w_norm, settings.xi)
    loss, acc = loss_and_acc(leaves, batch_stats, index, delta, x, y)
    better = loss > max_loss
    rel = jnp.sqrt(jnp.sum(jnp.square(delta))) / w_norm
    return delta, jnp.where(better, loss, max_loss), jnp.where(better, acc, acc_at_max), rel

  def maximize(params, batch_stats, index, x, y, key):
    index = jnp.asarray(index, jnp.int32)
    base_loss, base_acc = evaluate(params, batch_stats, index, x, y)
    delta = jnp.zeros(members[0].shape, jax.tree.leaves(params)[leaf_ids[0]].dtype)
    max_loss = acc = rel = jnp.float32(0)  # official: max_loss = 0, min_acc = 0.
    for e in range(settings.num_epochs):
      delta, max_loss, acc, rel = epoch(params, batch_stats, index, x, y,
                                        jax.random.fold_in(key, e), delta, max_loss, acc)
    return dict(max_loss=max_loss, acc_at_max=acc, base_loss=base_loss, base_acc=base_acc,
                rel_norm=rel)

  maximize.jitted = (evaluate, epoch)
  return maximize


def mrc_sweep(model: ModelFns, params, batch_stats, x_adv, y, modules: Sequence[Module],
              settings: MRCSettings = MRCSettings(), rng: jax.Array | None = None,
              progress: bool = True, done: Mapping[str, ModuleCriticality] | None = None,
              on_module: Callable[[int, dict], None] | None = None
              ) -> list[ModuleCriticality]:
  """MRC of every module in ``modules`` over the fixed adversarial set.

  Args:
    model, params, batch_stats: the adversarially trained model (eval-mode BN).
    x_adv: float32 ``[N, H, W, C]`` adversarial images in [0, 1].
    y: int ``[N]`` true labels.
    modules: from :func:`jaxrobust.rift.modules.list_modules`.
    settings: :class:`MRCSettings`.
    rng: PRNG key of the per-epoch shuffles (module ``j`` uses ``fold_in(rng, j)``).
    progress: show a progress bar.
    done: results of modules computed before (a resumed sweep), by name;
      those modules are skipped. Module ``j``'s result depends only on the
      inputs and ``fold_in(rng, j)``, so a resumed sweep equals an
      uninterrupted one.
    on_module: called after each computed module with its index and the
      results so far (``{name: ModuleCriticality}``), e.g. to save progress
      and stop on a preemption signal (it may raise).

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
    if done and m.name in done:
      results[m.name] = done[m.name]
      bar.update(1)
      continue
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
    if on_module is not None:
      on_module(j, dict(results))
  bar.close()
  return [results[m.name] for m in modules]


def least_critical(results: Sequence[ModuleCriticality]) -> ModuleCriticality:
  """The module with the lowest MRC (RiFT fine-tunes this one)."""
  return min(results, key=lambda r: r.mrc)
