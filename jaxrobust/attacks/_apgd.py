"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", Alg. 1), L-inf and L2.

Semantics follow the reference ``fra31/auto-attack:autoattack/autopgd_base.py``
(``APGDAttack.attack_single_run`` / ``perturb`` and ``APGDAttack_targeted``):

* start ``x + eps * t / ||t||`` (t ~ U[-1, 1]^d for L-inf, N(0, I) for L2),
  clipped to [0, 1];
* step size ``2 * eps`` per example; momentum 0.75 (none on the first step):
  ``z = P(x_k + eta * dir(g))``, ``x_{k+1} = P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}))``;
* checkpoints: the first after ``p_1 = max(int(0.22 n), 1)`` iterations, each next
  interval shorter by ``max(int(0.03 n), 1)`` down to ``max(int(0.06 n), 1)``;
  at a checkpoint an example's step size is halved and it restarts from its
  best point (and gradient) when the loss increased in at most ``rho = 75 %``
  of the interval's steps (condition 1, the reference's ``check_oscillation``
  including its wrap-around read of the zero-initialised loss history at the
  first checkpoint) or when the step was not reduced at the last checkpoint
  and the best loss did not improve since (condition 2);
* a misclassifying iterate is kept (``x_best_adv``): the reference keeps the
  last one, here the first one (deliberate: a fooled point's outputs then
  never change again and the AutoAttack cascade can drop it at the next
  checkpoint, :func:`apgd_segments`; the success flags are the same, and for
  a deterministic model both iterates are misclassified; with a stochastic
  model either was misclassified by one random pass only);
* restarts and target classes only attack points that are still robust.

Sign convention: the objectives (CE, DLR, targeted DLR) are maximised.
Stochastic models (:func:`jaxrobust.attacks.stochastic`) get a fresh key in
every forward pass; with ``eot_iter > 1`` (Expectation over Transformation,
AutoAttack 'rand') the gradient is averaged over ``eot_iter`` passes, as the
reference's ``eot_iter``. Deliberate differences: the loop is a
``lax.fori_loop`` over a fixed-size batch; the random stream differs from
PyTorch's.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from jaxrobust.attacks._losses import ce_loss, dlr_loss, dlr_targeted_loss
from jaxrobust.attacks._model import call_logits, model_key
from jaxrobust.attacks._norms import l2_norm
from jaxrobust.attacks._pgd import default_unroll
from jaxrobust.attacks._projections import project
from jaxrobust.attacks.registry import AttackSegments
from jaxrobust.types import AnyLogitsFn


def checkpoint_schedule(num_steps: int) -> list[int]:
  """Iterations (0-based) after which APGD checks its step size.

  ``[p_1 - 1, p_1 + p_2 - 1, ...]`` with the reference's integer rule: first
  interval ``max(int(0.22 n), 1)``, shrinking by ``max(int(0.03 n), 1)`` per
  checkpoint down to ``max(int(0.06 n), 1)``.
  """
  k = max(int(0.22 * num_steps), 1)
  k_min = max(int(0.06 * num_steps), 1)
  decr = max(int(0.03 * num_steps), 1)
  out, i = [], k - 1
  while i < num_steps:
    out.append(i)
    k = max(k - decr, k_min)
    i += k
  return out


def _normalize(t, norm):
  if norm == "linf":
    n = jnp.max(jnp.abs(t), axis=tuple(range(1, t.ndim)), keepdims=True)
  else:
    n = l2_norm(t)
  return t / (n + 1e-12)


def _loss_fn(loss: str) -> Callable:
  if loss == "ce":
    return lambda logits, y, t: ce_loss(logits, y)
  if loss == "dlr":
    return lambda logits, y, t: dlr_loss(logits, y)
  if loss == "dlr_targeted":
    return dlr_targeted_loss
  raise ValueError(f"unknown APGD loss {loss!r}; use 'ce', 'dlr' or 'dlr_targeted'")


def oscillation_flags(loss_steps, i, k, rho=0.75):
  """Condition 1 at iteration ``i`` with interval length ``k``.

  ``loss_steps`` is float32 ``[n, B]`` (row j = loss after step j, zeros
  for steps not taken). Counts ``loss[i-c] > loss[i-c-1]`` for c < k, reading
  index -1 as row n-1 like the reference, and flags ``count <= k * rho``.
  """
  n = loss_steps.shape[0]
  c = jnp.arange(n)
  cur = loss_steps[jnp.mod(i - c, n)]
  prev = loss_steps[jnp.mod(i - c - 1, n)]
  inc = ((cur > prev) & (c < k)[:, None]).astype(jnp.float32)
  return jnp.sum(inc, axis=0) <= k * rho


def step_size_flags(loss_steps, i, k, loss_best, loss_best_last, reduced_last, rho=0.75):
  """Which examples halve their step (and restart from their best point).

  At a checkpoint (iteration ``i``, interval ``k``): condition 1
  (:func:`oscillation_flags`) or condition 2 (the step was not reduced at the
  previous checkpoint, ``~reduced_last``, and ``loss_best`` did not improve on
  ``loss_best_last``, the best loss at that checkpoint). bool ``[B]``.
  """
  return oscillation_flags(loss_steps, i, k, rho) | (~reduced_last & (loss_best_last >= loss_best))


def _apgd_parts(logits_fn, rng, x, y, y_target, *, eps, norm, num_steps, loss, rho, eot_iter):
  """``(init, body)`` of one APGD run on ``x`` (checks the settings).

  ``init() -> state``: the per-row state after the random start (every leaf has
  the batch on axis 0; ``loss_steps`` is ``[B, num_steps]``). ``body(i, s) -> s``:
  iteration ``i``; ``s`` is the state plus the scalars ``counter`` (iterations
  since the last checkpoint) and ``k`` (the current interval).
  """
  if norm not in ("linf", "l2"):
    raise ValueError(f"APGD supports norm 'linf' or 'l2', got {norm!r}")
  lf = _loss_fn(loss)
  if loss == "dlr_targeted" and y_target is None:
    raise ValueError("loss='dlr_targeted' needs y_target")
  t_arg = y if y_target is None else y_target
  x = jax.lax.stop_gradient(x.astype(jnp.float32))
  b = x.shape[0]
  bshape = (b,) + (1,) * (x.ndim - 1)
  # A row keeps its FIRST misclassifying iterate, so nothing it returns changes once it is
  # fooled and the cascade can drop it from the batch (compaction).

  def value_grad(xa, i=0):
    def f(z, key):
      logits = call_logits(logits_fn, z, key)
      l = lf(logits, y, t_arg)
      return jnp.sum(l), (l, logits)
    if eot_iter == 1:
      g, (l, logits) = jax.grad(f, has_aux=True)(xa, model_key(rng, 1, i))
      return l, g, logits
    keys = jax.random.split(model_key(rng, 1, i), eot_iter)
    g, (l, logits) = jax.vmap(jax.grad(f, has_aux=True), in_axes=(None, 0))(xa, keys)
    return l[-1], jnp.mean(g, 0), logits[-1]

  k_min = max(int(0.06 * num_steps), 1)
  decr = max(int(0.03 * num_steps), 1)
  step0 = 2.0 * eps

  def init():
    if norm == "linf":
      t = jax.random.uniform(rng, x.shape, jnp.float32, -1.0, 1.0)
    else:
      t = jax.random.normal(rng, x.shape, jnp.float32)
    x_adv = jnp.clip(x + eps * _normalize(t, norm), 0.0, 1.0)
    l0, g0, logits0 = value_grad(x_adv)
    acc = jnp.argmax(logits0, -1) == y
    return dict(x_adv=x_adv, x_old=x_adv, grad=g0, x_best=x_adv, grad_best=g0, loss_best=l0,
                x_best_adv=x_adv, acc=acc, step=jnp.full((b,), step0, jnp.float32),
                loss_steps=jnp.zeros((b, num_steps), jnp.float32), loss_best_last=l0,
                reduced_last=jnp.ones((b,), bool))

  def body(i, s):
    a = jnp.where(i > 0, 0.75, 1.0)
    grad2 = s["x_adv"] - s["x_old"]
    x_cur = s["x_adv"]
    step = s["step"].reshape(bshape)
    if norm == "linf":
      z = project(x_cur + step * jnp.sign(s["grad"]), x, eps, norm)
    else:
      z = project(x_cur + step * _normalize(s["grad"], norm), x, eps, norm)
    x_new = project(x_cur + (z - x_cur) * a + grad2 * (1.0 - a), x, eps, norm)

    l, g, logits = value_grad(x_new, i + 1)
    pred_ok = jnp.argmax(logits, -1) == y
    acc_new = s["acc"] & pred_ok
    fooled = ~pred_ok & s["acc"]
    x_best_adv = jnp.where(fooled.reshape(bshape), x_new, s["x_best_adv"])
    loss_steps = s["loss_steps"].at[:, i].set(l)
    improved = l > s["loss_best"]
    imp = improved.reshape(bshape)
    x_best = jnp.where(imp, x_new, s["x_best"])
    grad_best = jnp.where(imp, g, s["grad_best"])
    loss_best = jnp.where(improved, l, s["loss_best"])

    counter = s["counter"] + 1
    check = counter == s["k"]
    halve = step_size_flags(loss_steps.T, i, s["k"], loss_best, s["loss_best_last"],
                            s["reduced_last"], rho)
    fl = halve & check
    flb = fl.reshape(bshape)
    return dict(
        x_adv=jnp.where(flb, x_best, x_new), x_old=x_cur,
        grad=jnp.where(flb, grad_best, g), x_best=x_best, grad_best=grad_best,
        loss_best=loss_best, x_best_adv=x_best_adv, acc=acc_new,
        step=jnp.where(fl, s["step"] / 2.0, s["step"]), loss_steps=loss_steps,
        counter=jnp.where(check, 0, counter),
        k=jnp.where(check, jnp.maximum(s["k"] - decr, k_min), s["k"]),
        loss_best_last=jnp.where(check, loss_best, s["loss_best_last"]),
        reduced_last=jnp.where(check, halve, s["reduced_last"]))

  return init, body


def apgd_single_run(logits_fn: AnyLogitsFn, rng: jax.Array, x: jax.Array, y: jax.Array, *,
                    eps: float, norm: str = "linf", num_steps: int = 100, loss: str = "ce",
                    y_target: jax.Array | None = None, rho: float = 0.75,
                    eot_iter: int = 1, unroll: int | None = None):
  """One APGD run (the reference's ``attack_single_run``).

  Args:
    logits_fn: pure ``x -> logits`` (eval-mode model), or a stochastic
      ``(x, key) -> logits`` (:func:`jaxrobust.attacks.stochastic`) that gets
      a fresh key, derived from ``rng``, in every forward pass.
    rng: PRNG key of the random start (and of a stochastic model's keys).
    x: float32 ``[B, H, W, C]`` in [0, 1].
    y: int32 ``[B]`` true labels.
    eps: budget in pixel units.
    norm: ``'linf'`` or ``'l2'``.
    num_steps: iterations (100 in AutoAttack).
    loss: ``'ce'``, ``'dlr'`` or ``'dlr_targeted'`` (needs ``y_target``).
    y_target: int32 ``[B]`` target classes for ``dlr_targeted``.
    rho: the oscillation threshold (0.75).
    eot_iter: Expectation over Transformation for randomised models: the
      gradient is averaged over ``eot_iter`` forward passes, each with a
      fresh key (the loss and logits of the last one are used, as the
      reference). 1: one pass per iteration. A deterministic model gives the
      same gradient in each pass.
    unroll: loop unroll factor (None: :func:`default_unroll`).

  Returns:
    ``(x_adv, success, x_best, loss_best)``: ``x_adv`` float32 like x is a
    misclassifying iterate where one was found (``success`` bool ``[B]``) and
    the start point otherwise: the first one (the reference keeps the last; a
    fooled row's result is then final, see :func:`apgd_segments`); ``x_best``/``loss_best``
    the highest-loss iterate and its loss.
  """
  init, body = _apgd_parts(logits_fn, rng, x, y, y_target, eps=eps, norm=norm,
                           num_steps=num_steps, loss=loss, rho=rho, eot_iter=eot_iter)
  s = dict(init(), counter=jnp.int32(0), k=jnp.int32(max(int(0.22 * num_steps), 1)))
  unroll = default_unroll(num_steps) if unroll is None else unroll
  s = jax.lax.fori_loop(0, num_steps, body, s, unroll=unroll)
  sg = jax.lax.stop_gradient
  return sg(s["x_best_adv"]), ~s["acc"], sg(s["x_best"]), sg(s["loss_best"])


def apgd_segments(num_steps: int) -> list[tuple[int, int, int]]:
  """APGD's iterations cut at its checkpoints: ``[(start, stop, k), ...]``.

  Segment ``j`` runs iterations ``start <= i < stop``; all but the last end
  with a checkpoint (:func:`checkpoint_schedule`), ``k`` is the interval in
  force during the segment. Every per-row quantity of APGD depends on that row
  only, and a fooled row's results are final (:func:`apgd_single_run` keeps
  the first misclassifying iterate), so rows
  fooled by the end of a segment can leave the batch
  (:func:`apgd_run_segment`): the rows that stay get exactly the same results.
  """
  k = max(int(0.22 * num_steps), 1)
  k_min = max(int(0.06 * num_steps), 1)
  decr = max(int(0.03 * num_steps), 1)
  out, start = [], 0
  for c in checkpoint_schedule(num_steps):
    out.append((start, c + 1, k))
    k = max(k - decr, k_min)
    start = c + 1
  if start < num_steps:
    out.append((start, num_steps, k))
  return out


def apgd_init_state(logits_fn: AnyLogitsFn, rng: jax.Array, x: jax.Array, y: jax.Array, *,
                    eps: float, norm: str = "linf", num_steps: int = 100, loss: str = "ce",
                    y_target: jax.Array | None = None, rho: float = 0.75,
                    eot_iter: int = 1) -> dict:
  """The state of :func:`apgd_single_run` after its random start (a dict of per-row arrays,
  batch on axis 0), for :func:`apgd_run_segment`. Arguments as :func:`apgd_single_run`."""
  init, _ = _apgd_parts(logits_fn, rng, x, y, y_target, eps=eps, norm=norm,
                        num_steps=num_steps, loss=loss, rho=rho, eot_iter=eot_iter)
  s = init()
  if y_target is not None:
    s["y_target"] = jnp.asarray(y_target, jnp.int32)
  return s


def apgd_run_segment(logits_fn: AnyLogitsFn, rng: jax.Array, x: jax.Array, y: jax.Array,
                     state: dict, start, stop, k, *, eps: float, norm: str = "linf",
                     num_steps: int = 100, loss: str = "ce", rho: float = 0.75,
                     eot_iter: int = 1) -> dict:
  """Iterations ``start <= i < stop`` of :func:`apgd_single_run` from ``state``.

  ``(start, stop, k)``: one of :func:`apgd_segments` (int32, may be traced, so one
  compiled program serves every segment); ``x``, ``y`` and ``state`` may be any
  subset of the rows of :func:`apgd_init_state`'s batch (each row's result depends
  on that row only). Running every segment in turn equals :func:`apgd_single_run`.
  Returns the new state.
  """
  state = dict(state)
  y_target = state.pop("y_target", None)
  _, body = _apgd_parts(logits_fn, rng, x, y, y_target, eps=eps, norm=norm,
                        num_steps=num_steps, loss=loss, rho=rho, eot_iter=eot_iter)
  s = dict(state, counter=jnp.int32(0), k=jnp.asarray(k, jnp.int32))
  s = jax.lax.fori_loop(jnp.asarray(start, jnp.int32), jnp.asarray(stop, jnp.int32), body, s)
  del s["counter"], s["k"]
  if y_target is not None:
    s["y_target"] = y_target
  return s


def top_k_target(logits, rank: int | jax.Array):
  """The class with the ``rank``-th largest logit (rank 2 = best non-top class).

  As the reference's ``output.sort(dim=1)[1][:, -target_class]``.
  """
  order = jnp.argsort(logits, axis=-1)
  return jnp.take_along_axis(order, (logits.shape[-1] - rank) * jnp.ones(
      (logits.shape[0], 1), jnp.int32), axis=-1)[:, 0]


def apgd(logits_fn: AnyLogitsFn, rng: jax.Array, x: jax.Array, y: jax.Array, *, eps: float,
         norm: str = "linf", num_steps: int = 100, loss: str = "ce", num_restarts: int = 1,
         rho: float = 0.75, eot_iter: int = 1, unroll: int | None = None) -> jax.Array:
  """APGD-CE / APGD-DLR with restarts on a batch (reference ``APGDAttack.perturb``).

  Args:
    logits_fn, rng, x, y, eps, norm, num_steps, rho, eot_iter, unroll: as
      :func:`apgd_single_run`.
    loss: ``'ce'`` or ``'dlr'``.
    num_restarts: runs; each later run only changes points still robust.

  Returns:
    float32 ``x_adv`` like ``x``: a misclassified point where one was found,
    else ``x`` itself; within eps and [0, 1]; no gradient.
  """
  x = x.astype(jnp.float32)
  robust = jnp.argmax(call_logits(logits_fn, x, model_key(rng, 0)), -1) == y
  adv = x

  for r in range(num_restarts):
    x_r, succ, _, _ = apgd_single_run(logits_fn, jax.random.fold_in(rng, r), x, y, eps=eps,
                                      norm=norm, num_steps=num_steps, loss=loss, rho=rho,
                                      eot_iter=eot_iter, unroll=unroll)
    new = robust & succ
    adv = jnp.where(new.reshape((-1,) + (1,) * (x.ndim - 1)), x_r, adv)
    robust = robust & ~succ
  return jax.lax.stop_gradient(adv)


def apgd_targeted(logits_fn: AnyLogitsFn, rng: jax.Array, x: jax.Array, y: jax.Array, *,
                  eps: float, norm: str = "linf", num_steps: int = 100,
                  n_target_classes: int = 9, num_restarts: int = 1, rho: float = 0.75,
                  eot_iter: int = 1, unroll: int | None = None) -> jax.Array:
  """APGD-T: targeted DLR towards each of the top ``n_target_classes`` non-true
  classes of the clean point in turn (reference ``APGDAttack_targeted``).

  Needs at least ``n_target_classes + 1`` classes (and 4 for the DLR
  denominator). Arguments as :func:`apgd_single_run`; returns ``x_adv`` as
  :func:`apgd`.

  Raises:
    ValueError: too few classes for ``n_target_classes``.
  """
  x = x.astype(jnp.float32)
  clean_logits = call_logits(logits_fn, x, model_key(rng, 0))
  if clean_logits.shape[-1] < max(n_target_classes + 1, 4):
    raise ValueError(f"APGD-T with {n_target_classes} targets needs at least "
                     f"{max(n_target_classes + 1, 4)} classes, got {clean_logits.shape[-1]}")
  robust = jnp.argmax(clean_logits, -1) == y
  adv = x
  run = functools.partial(apgd_single_run, logits_fn, eps=eps, norm=norm,
                          num_steps=num_steps, loss="dlr_targeted", rho=rho,
                          eot_iter=eot_iter, unroll=unroll)
  for t in range(2, n_target_classes + 2):
    target = top_k_target(clean_logits, t)
    for r in range(num_restarts):
      key = jax.random.fold_in(jax.random.fold_in(rng, t), r)
      x_r, succ, _, _ = run(key, x, y, y_target=target)
      new = robust & succ
      adv = jnp.where(new.reshape((-1,) + (1,) * (x.ndim - 1)), x_r, adv)
      robust = robust & ~succ
  return jax.lax.stop_gradient(adv)


def apgd_pass(logits_fn: AnyLogitsFn, rng: jax.Array, x: jax.Array, y: jax.Array,
              sub: int | jax.Array, *, eps: float, norm: str = "linf", num_steps: int = 100,
              loss: str = "ce", num_restarts: int = 1, rho: float = 0.75, eot_iter: int = 1,
              unroll: int | None = None) -> jax.Array:
  """Pass ``sub`` (restart ``sub < num_restarts``) of APGD in the AutoAttack cascade.

  The cascade calls it once per restart on the points still robust, with a
  key per pass, as the reference's ``APGDAttack.perturb`` restart loop does
  inside each batch. Arguments as :func:`apgd_single_run`.

  Returns:
    float32 ``x_adv`` like ``x``: the last misclassifying iterate where one
    was found, else the random start (the cascade keeps only successes).
  """
  del sub, num_restarts
  return apgd_single_run(logits_fn, rng, x, y, eps=eps, norm=norm, num_steps=num_steps,
                         loss=loss, rho=rho, eot_iter=eot_iter, unroll=unroll)[0]


def apgd_targeted_pass(logits_fn: AnyLogitsFn, rng: jax.Array, x: jax.Array, y: jax.Array,
                       sub: int | jax.Array, *, eps: float, norm: str = "linf",
                       num_steps: int = 100, n_target_classes: int = 9, num_restarts: int = 1,
                       rho: float = 0.75, eot_iter: int = 1,
                       unroll: int | None = None) -> jax.Array:
  """Pass ``sub`` of APGD-T in the AutoAttack cascade: target class ``sub // num_restarts``.

  Target: the class of the ``(sub // num_restarts + 2)``-th largest clean
  logit (:func:`top_k_target`); one targeted-DLR run (reference
  ``APGDAttack_targeted.perturb``, its loop over target classes and
  restarts). ``sub`` may be traced. Arguments as :func:`apgd_single_run`.

  Returns:
    float32 ``x_adv`` like ``x`` (as :func:`apgd_pass`).
  """
  del n_target_classes
  clean_logits = call_logits(logits_fn, x.astype(jnp.float32), model_key(rng, 0))
  target = top_k_target(clean_logits, sub // num_restarts + 2)
  return apgd_single_run(logits_fn, rng, x, y, eps=eps, norm=norm, num_steps=num_steps,
                         loss="dlr_targeted", y_target=target, rho=rho, eot_iter=eot_iter,
                         unroll=unroll)[0]


def _pass_segments(num_steps, targeted, run_kw, num_restarts) -> AttackSegments:
  table = jnp.asarray(apgd_segments(num_steps), jnp.int32)

  def init(logits_fn, key, x, y, sub):
    kw = dict(run_kw)
    if targeted:
      clean_logits = call_logits(logits_fn, x.astype(jnp.float32), model_key(key, 0))
      kw.update(y_target=top_k_target(clean_logits, sub // num_restarts + 2))
    return apgd_init_state(logits_fn, key, x, y, **kw)

  def step(logits_fn, key, x, y, sub, state, seg):
    del sub
    start, stop, k = table[seg, 0], table[seg, 1], table[seg, 2]
    return apgd_run_segment(logits_fn, key, x, y, state, start, stop, k, **run_kw)

  return AttackSegments(count=len(table), init=init, step=step,
                        done=lambda st: ~st["acc"], result=lambda st: st["x_best_adv"])


def apgd_pass_segments(*, eps: float, norm: str = "linf", num_steps: int = 100,
                       loss: str = "ce", num_restarts: int = 1, rho: float = 0.75,
                       eot_iter: int = 1, unroll: int | None = None) -> AttackSegments:
  """:func:`apgd_pass` cut at APGD's checkpoints (:func:`apgd_segments`) for the cascade's
  compaction; a row is done once misclassified (deterministic models)."""
  del unroll
  return _pass_segments(num_steps, False, dict(eps=eps, norm=norm, num_steps=num_steps,
                                               loss=loss, rho=rho, eot_iter=eot_iter),
                        num_restarts)


def apgd_targeted_pass_segments(*, eps: float, norm: str = "linf", num_steps: int = 100,
                                n_target_classes: int = 9, num_restarts: int = 1,
                                rho: float = 0.75, eot_iter: int = 1,
                                unroll: int | None = None) -> AttackSegments:
  """:func:`apgd_targeted_pass` cut at APGD's checkpoints, as :func:`apgd_pass_segments`."""
  del unroll, n_target_classes
  return _pass_segments(num_steps, True, dict(eps=eps, norm=norm, num_steps=num_steps,
                                              loss="dlr_targeted", rho=rho,
                                              eot_iter=eot_iter), num_restarts)
