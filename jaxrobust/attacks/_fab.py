"""FAB: the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), targeted and untargeted.

A JAX re-implementation of the reference semantics of ``fra31/auto-attack``
(``autoattack/fab_base.py``, ``fab_pt.py``, ``fab_projections.py``): the attack
that AutoAttack "standard" runs as ``'fab-t'`` (1 restart, 100 iterations,
9 target classes, ``alpha_max=0.1``, ``eta=1.05``, ``beta=0.9``), and the
untargeted :func:`fab` that version "plus" runs as ``'fab'`` (5 restarts).

One FAB iteration at the current iterate ``x1`` (clean point ``x0``):

1. linearise the targeted margin ``f_t - f_y`` at ``x1``: it is zero on the
   hyperplane ``{z : <w, z> = b}`` with ``w = grad(f_t - f_y)(x1)`` and
   ``b = <w, x1> - (f_t - f_y)(x1)`` (untargeted: the margin ``f_j - f_y``,
   ``j != y``, whose linearised boundary is closest to ``x1``);
2. project both ``x1`` and ``x0`` onto that hyperplane intersected with the box
   ``[0, 1]^d`` in the chosen norm (:func:`fab_projection`), giving ``d1``
   and ``d2``;
3. biased extrapolation: ``alpha = min(||d1|| / (||d1|| + ||d2||), alpha_max)``
   and ``x1 <- clip((1 - alpha)(x1 + eta d1) + alpha (x0 + eta d2), 0, 1)``;
4. if ``x1`` is misclassified, keep it when its distance to ``x0`` is the
   smallest so far, then step back: ``x1 <- x0 + beta (x1 - x0)``.

In the AutoAttack cascade each run (target class, restart) is one pass
(:func:`fab_targeted_pass`, :func:`fab_pass`) over the points still robust: FAB
minimises the norm, so a point's best iterate keeps improving after its first
success and a run cannot be cut short without changing ``x_adv``, but between
runs the fooled points leave the batch.

The projections (:func:`fab_projection`) live in
:mod:`jaxrobust.attacks._fab_projections`, as the reference keeps them in
``fab_projections.py``.

Stochastic models (:func:`jaxrobust.attacks.stochastic`) get a fresh key in
every forward pass (gradient and misclassification checks alike).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.attacks._fab_projections import (FAB_NORMS, _gather, _zero_tol,
                                                fab_projection)
from jaxrobust.attacks._model import call_logits, model_key
from jaxrobust.attacks._norms import l2_norm
from jaxrobust.types import AnyLogitsFn

def _row_norm(v, norm: str):
  """Norm of each row of ``v`` ``[N, D]`` over its last axis: ``[N]`` (also ``[N, K, D]`` -> ``[N, K]``)."""
  if norm == "linf":
    return jnp.max(jnp.abs(v), axis=-1)
  if norm == "l2":
    return l2_norm(v, axis=-1, keepdims=False)
  return jnp.sum(jnp.abs(v), axis=-1)


def _random_start(key, x0, eps, norm: str):
  """The reference's restart point: ``x0 + eps / 2`` times a random unit vector, clipped.

  ``eps``: float32 ``[N]``, one radius per row of ``x0``.
  """
  if norm == "linf":
    t = jax.random.uniform(key, x0.shape, x0.dtype, -1.0, 1.0)
  else:
    t = jax.random.normal(key, x0.shape, x0.dtype)
  t = t / jnp.maximum(_row_norm(t, norm), jnp.finfo(x0.dtype).tiny)[:, None]
  return jnp.clip(x0 + 0.5 * eps[:, None] * t, 0.0, 1.0)


def _fab_update(x1, x0, w, b, norm, eta, alpha_max):
  """Steps 2-3 of a FAB iteration: both projections and the biased extrapolation."""
  n = x1.shape[0]
  d3 = fab_projection(jnp.concatenate([x1, x0]), jnp.concatenate([w, w]),
                      jnp.concatenate([b, b]), norm)
  a0 = jnp.maximum(_row_norm(d3, norm), _zero_tol(d3.dtype))[:, None]
  d1, d2 = d3[:n], d3[n:]
  a1, a2 = a0[:n], a0[n:]
  alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)
  return jnp.clip((x1 + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha, 0.0, 1.0)


def _check_settings(norm, eps, num_steps, num_restarts, alpha_max, eta, beta):
  """Argument checks shared by :func:`fab` and :func:`fab_targeted` (ValueError)."""
  if norm not in FAB_NORMS:
    raise ValueError(f"unknown norm {norm!r}; use one of {FAB_NORMS}")
  try:
    concrete_eps = np.asarray(eps, np.float64)
  except jax.errors.TracerArrayConversionError:
    concrete_eps = None
  if concrete_eps is not None and not np.all(concrete_eps > 0):
    raise ValueError(f"eps must be > 0, got {eps}")
  if num_steps < 1 or num_restarts < 1:
    raise ValueError(f"num_steps ({num_steps}) and num_restarts ({num_restarts}) must be >= 1")
  if not (0 <= alpha_max <= 1 and eta > 0 and 0 <= beta <= 1):
    raise ValueError(f"need 0 <= alpha_max <= 1, eta > 0, 0 <= beta <= 1; got alpha_max="
                     f"{alpha_max}, eta={eta}, beta={beta}")


def _prepare(x, y, eps):
  """float32 ``x``, int32 ``y``, flat rows ``x0`` ``[B, D]`` and per-row float32 ``eps``."""
  x = jax.lax.stop_gradient(jnp.asarray(x, jnp.float32))
  y = jnp.asarray(y, jnp.int32)
  batch = x.shape[0]
  if jnp.ndim(eps) > 1 or jnp.size(eps) not in (1, batch):
    raise ValueError(f"eps must be a scalar or have shape [{batch}], got shape "
                     f"{jnp.shape(eps)}")
  eps = jnp.broadcast_to(jnp.reshape(jnp.asarray(eps, jnp.float32), (-1,)), (batch,))
  return x, y, x.reshape(batch, -1), eps


class _Setup(NamedTuple):
  """What :func:`fab` and :func:`fab_targeted` share (:func:`_setup`)."""
  x: jax.Array                # float32 [B, ...]
  y: jax.Array                # int32 [B]
  x0: jax.Array               # float32 [B, D]: flat clean rows
  eps: jax.Array              # float32 [B]
  logits_of: Callable         # (z [B, D], key) -> float32 logits [B, K]
  clean_logits: jax.Array     # float32 [B, K], no gradient
  correct: jax.Array          # bool [B]: clean point classified correctly
  misclassified: Callable     # (z [B, D], key) -> bool [B]


def _setup(name, logits_fn, rng, x, y, eps, norm, num_steps, num_restarts, alpha_max, eta,
           beta) -> _Setup:
  """Checks the settings, flattens the batch and makes the model calls of FAB / FAB-T.

  Raises:
    ValueError: invalid settings (:func:`_check_settings`) or fewer than 2 classes.
  """
  _check_settings(norm, eps, num_steps, num_restarts, alpha_max, eta, beta)
  x, y, x0, eps = _prepare(x, y, eps)

  def logits_of(z, key):
    return call_logits(logits_fn, z.reshape(x.shape), key).astype(jnp.float32)

  clean_logits = jax.lax.stop_gradient(logits_of(x0, model_key(rng, 0)))
  if clean_logits.shape[-1] < 2:
    raise ValueError(f"{name} needs >= 2 classes, got {clean_logits.shape[-1]}")

  def misclassified(z, key):
    return jnp.argmax(logits_of(z, key), axis=-1) != y

  return _Setup(x, y, x0, eps, logits_of, clean_logits,
                jnp.argmax(clean_logits, axis=-1) == y, misclassified)


def _fab_single_run(hyperplane, misclassified, x0, eps, key, random_start, *, run_key, norm,
                    num_steps, use_random_start, eta, alpha_max, beta):
  """``num_steps`` FAB iterations from ``x0`` (or a random start); the best adversarial.

  ``hyperplane(x1, key) -> (w, df)``: the normal ``[B, D]`` and value ``[B]``
  of the linearised margin at ``x1`` (its zero set is ``<w, z> = <w, x1> -
  df``); ``misclassified(x1, key) -> bool [B]``. ``run_key(j, kind)``: the
  model key of step ``j``'s gradient (kind 0) and check (kind 1) passes.
  Returns the misclassified iterate of smallest distance to ``x0``, else ``x0``.
  """
  x1 = x0
  if use_random_start:
    x1 = jnp.where(random_start, _random_start(key, x0, eps, norm), x0)

  def step(j, carry):
    x1, best, best_dist = carry
    w, df = hyperplane(x1, run_key(j, 0))
    b = jnp.sum(w * x1, axis=1) - df
    x1 = _fab_update(x1, x0, w, b, norm, eta, alpha_max)
    adv = misclassified(x1, run_key(j, 1))
    dist = _row_norm(x1 - x0, norm)
    better = adv & (dist < best_dist)
    best = jnp.where(better[:, None], x1, best)
    best_dist = jnp.where(better, dist, best_dist)
    x1 = jnp.where(adv[:, None], x0 + (x1 - x0) * beta, x1)
    return x1, best, best_dist

  init = (x1, x0, jnp.full((x0.shape[0],), jnp.inf, jnp.float32))
  _, best, _ = jax.lax.fori_loop(0, num_steps, step, init)
  return best          # x0 where nothing was found


def _fab_runs(candidate, setup: _Setup, rng, norm, n_runs):
  """Runs ``candidate(i)`` for ``i < n_runs`` on the still-robust rows; the first success each.

  A run is skipped (``lax.cond``) once no row is left; a row succeeds when its
  candidate is misclassified and within ``eps`` of ``x0``.
  """
  x0, eps = setup.x0, setup.eps

  def run(i, carry):
    def attack(carry):
      x_adv, robust = carry
      cand = candidate(i)
      success = (setup.misclassified(cand, model_key(rng, 2, i)) &
                 (_row_norm(cand - x0, norm) <= eps))
      take = robust & success
      return jnp.where(take[:, None], cand, x_adv), robust & ~success

    return jax.lax.cond(jnp.any(carry[1]), attack, lambda c: c, carry)

  x_adv, _ = jax.lax.fori_loop(0, n_runs, run, (x0, setup.correct))
  return x_adv


def _fab_pass(candidate, setup: _Setup, rng, norm, i, n_runs):
  """Run ``i`` alone (an AutoAttack pass): ``candidate(i)`` where it succeeds, else ``x0``.

  Success as in :func:`_fab_runs` (misclassified, within ``eps``, clean point
  correct), so a cascade of passes ``i = 0, 1, ...`` on the rows still robust
  after the previous ones keeps each row's first success, as :func:`_fab_runs`.
  ``i`` may be traced; ``i >= n_runs`` returns ``x0`` without attacking.
  """
  x0, eps = setup.x0, setup.eps

  def attack(_):
    cand = candidate(i)
    success = (setup.misclassified(cand, model_key(rng, 2, i)) &
               (_row_norm(cand - x0, norm) <= eps))
    return jnp.where((setup.correct & success)[:, None], cand, x0)

  return jax.lax.cond(i < n_runs, attack, lambda _: x0, None)


def _run_keys(rng, i):
  """``(j, kind) -> key``: model keys of run ``i`` (:func:`_fab_single_run`)."""
  return lambda j, kind: model_key(rng, 1, i, j, kind)


def fab_targeted(logits_fn: AnyLogitsFn, rng: jax.Array, x: jax.Array, y: jax.Array, *,
                 eps, norm: str = "linf", num_steps: int = 100, num_restarts: int = 1,
                 n_target_classes: int = 9, alpha_max: float = 0.1, eta: float = 1.05,
                 beta: float = 0.9) -> jax.Array:
  """FAB-T, targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020).

  Reference: ``fra31/auto-attack``, ``FABAttack.perturb`` with
  ``targeted=True`` (``autoattack/fab_base.py``, ``fab_pt.py``,
  ``fab_projections.py``); the defaults are AutoAttack "standard"'s FAB-T.

  For ``k = 2, ..., n_target_classes + 1`` (outer loop) and each restart
  (inner loop), the examples that are still robust run ``num_steps`` FAB
  iterations (see the module docstring) towards the hyperplane of ``f_t =
  f_y``, ``t`` the class of the k-th largest clean logit. The first restart
  starts at ``x``; later ones at ``clip(x + eps/2 * u)``, ``u`` a random unit
  vector of the norm (uniform-then-L-inf-normalised for L-inf, Gaussian
  normalised for L2/L1). A run keeps the misclassified iterate of smallest
  distance to ``x``; it counts as a success when it is misclassified and its
  distance is ``<= eps``, and a successful example is not attacked again (so
  it keeps the adversarial point of the first target class that succeeded).
  As in the reference, "success" is any misclassification, not necessarily
  reaching the target class.

  Deliberate differences from the reference:
    * Fixed shapes: every run computes all examples and only the still-robust
      ones take its result (the reference gathers the subset); a run is
      skipped (``lax.cond``) when no example is left. Identical per-example
      results unless ``logits_fn`` couples examples (BatchNorm in train mode).
      The AutoAttack cascade instead runs each (target, restart) run as a
      pass (:func:`fab_targeted_pass`) on the points still robust, so the
      fooled ones leave the batch between runs.
    * The magic constants are dtype-safe: the "no adversarial yet" distance
      is ``+inf`` instead of 1e10, the projection's sentinel for ``|w| ~ 0``
      is ``finfo.max`` plus a mask instead of 1e12 (and its ±1e12 clamp,
      which only matters for those coordinates or points outside the box, is
      dropped), and the 1e-8 floors are ``max(1e-8, finfo.tiny)``. The reference
      overflows in half precision (``1e10`` is not a float16; see
      Harry24k/adversarial-attacks-pytorch#100). The attack itself runs in
      float32 (logits are cast), and divisions in branches that are discarded
      are guarded, so no inf/NaN reaches the result.
    * The targeted attack has a single hyperplane, so the reference's choice
      of the closest hyperplane (``dist1`` with its 1e-12) is omitted.
    * ``n_target_classes`` is clamped to ``K - 1`` (the reference raises an
      index error when ``n_target_classes + 1 > K``); ties between clean logits
      are broken by ``lax.top_k`` (lower class index first), not by
      ``torch.sort``.
    * The L1 projection's binary search takes ``ceil(log2(D + 1))`` steps over
      its ``D + 1`` breakpoints; the reference takes ``ceil(log2 D)``, which
      can stop one breakpoint short when ``D`` is a power of two.
    * Randomness (restarts > 1 only) comes from ``jax.random.fold_in(rng,
      run)``, not a torch seed. With ``num_restarts=1`` and a deterministic
      model ``rng`` is unused.

  Args:
    logits_fn: pure ``x -> logits`` (``[B, K]``; cast to float32), or a
      stochastic ``(x, key) -> logits`` (:func:`jaxrobust.attacks.stochastic`)
      that gets a fresh key, derived from ``rng``, in every forward pass.
    rng: PRNG key for the random restarts (and a stochastic model's keys).
    x: float32 ``[B, H, W, C]`` (any ``[B, ...]``) in [0, 1].
    y: int ``[B]`` true labels. Examples with ``argmax logits_fn(x) != y``
      are returned unchanged.
    eps: budget in pixel units (e.g. 8/255 L-inf, 0.5 L2), > 0: a number,
      or an array of shape ``[]`` or ``[B]`` (one budget per example); it may
      be traced. It is the success threshold and the radius of the random
      restarts; the attack itself minimises the norm.
    norm: ``'linf'``, ``'l2'`` or ``'l1'``.
    num_steps: FAB iterations per run (``n_iter``), >= 1.
    num_restarts: runs per target class (``n_restarts``), >= 1.
    n_target_classes: number of target classes (k = 2..n+1), >= 1.
    alpha_max: largest weight of the clean-point projection, in [0, 1].
    eta: overshoot factor of the projection step, > 0.
    beta: backward step towards ``x`` after a success, in [0, 1].

  Returns:
    float32 ``x_adv`` like ``x``: per example the smallest-norm adversarial
    point found with ``||x_adv - x|| <= eps`` in ``[0, 1]``, else ``x``. No
    gradient flows through it.

  Raises:
    ValueError: invalid norm, eps (value or shape), step/restart/target
      count, alpha_max, eta or beta, or fewer than 2 classes.
  """
  st, n_runs, candidate = _targeted_runs(
      logits_fn, rng, x, y, eps=eps, norm=norm, num_steps=num_steps, num_restarts=num_restarts,
      n_target_classes=n_target_classes, alpha_max=alpha_max, eta=eta, beta=beta)
  x_adv = _fab_runs(candidate, st, rng, norm, n_runs)
  return jax.lax.stop_gradient(x_adv.reshape(st.x.shape))


def _targeted_runs(logits_fn, rng, x, y, *, eps, norm, num_steps, num_restarts,
                   n_target_classes, alpha_max, eta, beta):
  """``(setup, n_runs, candidate)`` of FAB-T: run ``i`` is target ``i // num_restarts``
  (the ``(i // num_restarts + 2)``-th largest clean logit), restart ``i % num_restarts``."""
  if n_target_classes < 1:
    raise ValueError(f"n_target_classes must be >= 1, got {n_target_classes}")
  st = _setup("FAB-T", logits_fn, rng, x, y, eps, norm, num_steps, num_restarts, alpha_max,
              eta, beta)
  y = st.y
  n_targets = min(n_target_classes, st.clean_logits.shape[-1] - 1)
  _, ranked = jax.lax.top_k(st.clean_logits, n_targets + 1)   # [B, n + 1], best first

  def margin(z, key, target):
    logits = st.logits_of(z, key)
    diff = _gather(logits, target) - _gather(logits, y)      # f_t - f_y
    return jnp.sum(diff), diff

  margin_grad = jax.grad(margin, has_aux=True)

  def candidate(i):
    target = jax.lax.dynamic_index_in_dim(ranked, 1 + i // num_restarts, axis=1,
                                          keepdims=False)
    return _fab_single_run(lambda z, key: margin_grad(z, key, target), st.misclassified,
                           st.x0, st.eps, jax.random.fold_in(rng, i), i % num_restarts > 0,
                           run_key=_run_keys(rng, i), norm=norm, num_steps=num_steps,
                           use_random_start=num_restarts > 1, eta=eta, alpha_max=alpha_max,
                           beta=beta)

  return st, n_targets * num_restarts, candidate


def fab_targeted_pass(logits_fn: AnyLogitsFn, rng: jax.Array, x: jax.Array, y: jax.Array,
                      sub: int | jax.Array, *, eps, norm: str = "linf", num_steps: int = 100,
                      num_restarts: int = 1, n_target_classes: int = 9,
                      alpha_max: float = 0.1, eta: float = 1.05,
                      beta: float = 0.9) -> jax.Array:
  """Pass ``sub`` of FAB-T in the AutoAttack cascade: run ``sub`` of :func:`fab_targeted`.

  Target class ``sub // num_restarts`` (the ``(sub // num_restarts + 2)``-th
  largest clean logit), restart ``sub % num_restarts``; the cascade runs the
  ``n_target_classes * num_restarts`` passes in order, each on the points still
  robust after the previous ones, as the reference's loop over target classes
  (and restarts) inside each batch. FAB minimises the norm, so a run cannot be
  cut short once a point is fooled (its point keeps improving); between runs
  the fooled points leave the batch. Run ``i`` uses the keys :func:`fab_targeted`
  uses for run ``i`` with this ``rng``, so with ``num_restarts=1`` and a
  deterministic model (``rng`` unused) the cascade's flags and adversarial
  examples are those of one :func:`fab_targeted` call on the whole batch.
  ``sub`` may be traced; passes past the ``K - 1`` classes return ``x``.
  Arguments as :func:`fab_targeted`.

  Returns:
    float32 ``x_adv`` like ``x``: the run's smallest-norm adversarial point
    where it is misclassified and within ``eps`` (clean point correct), else
    ``x``. No gradient flows through it.
  """
  st, n_runs, candidate = _targeted_runs(
      logits_fn, rng, x, y, eps=eps, norm=norm, num_steps=num_steps, num_restarts=num_restarts,
      n_target_classes=n_target_classes, alpha_max=alpha_max, eta=eta, beta=beta)
  x_adv = _fab_pass(candidate, st, rng, norm, jnp.asarray(sub, jnp.int32), n_runs)
  return jax.lax.stop_gradient(x_adv.reshape(st.x.shape))


_DUAL = {"linf": "l1", "l2": "l2", "l1": "linf"}


def _dual_norm_last(g, norm: str):
  """Dual norm over the last axis: L1 for L-inf, L2 for L2, L-inf for L1."""
  return _row_norm(g, _DUAL[norm])


def fab(logits_fn: AnyLogitsFn, rng: jax.Array, x: jax.Array, y: jax.Array, *, eps,
        norm: str = "linf", num_steps: int = 100, num_restarts: int = 5,
        alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9) -> jax.Array:
  """FAB, untargeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020).

  Reference: ``fra31/auto-attack``, ``FABAttack.perturb`` with
  ``targeted=False`` (``autoattack/fab_base.py``, ``fab_pt.py``
  ``get_diff_logits_grads_batch``); the defaults are AutoAttack "plus"'s FAB
  (5 restarts, 100 iterations).

  Each iteration linearises every margin ``f_j - f_y`` (``j != y``) at the
  current iterate ``x1`` (one vector-Jacobian product per class) and picks the
  hyperplane ``j`` closest to ``x1``: smallest ``|f_j - f_y| / ||grad(f_j -
  f_y)||_dual`` (dual norm: L1 for L-inf, L2 for L2, L-inf for L1); the
  projection, extrapolation and backward step are then those of
  :func:`fab_targeted` (see the module docstring). Each restart attacks the
  examples that are still robust: the first starts at ``x``, later ones at
  ``clip(x + eps/2 * u)``, ``u`` a random unit vector of the norm. A run keeps
  the misclassified iterate of smallest distance to ``x`` and succeeds when
  that distance is ``<= eps``; a successful example is not attacked again.

  Deliberate differences from the reference (besides those listed in
  :func:`fab_targeted`: fixed shapes, dtype-safe constants, float32, the L1
  binary search, ``jax.random.fold_in(rng, restart)`` randomness):
    * The true class is excluded from the closest-hyperplane choice with a
      ``+inf`` distance (the reference sets its logit difference to 1e10), and
      the guard of the distance's denominator is ``max(1e-12, finfo.tiny)``
      of the gradient dtype instead of a bare 1e-12 (which is 0 in float16).
    * The class gradients come from ``jax.vmap`` of one ``jax.vjp`` over the
      ``K`` one-hot cotangents (the reference loops ``K`` backward passes);
      ties in the closest distance go to the lowest class index.

  Args:
    logits_fn: pure ``x -> logits`` (``[B, K]``; cast to float32), or a
      stochastic ``(x, key) -> logits`` (:func:`jaxrobust.attacks.stochastic`)
      that gets a fresh key, derived from ``rng``, in every forward pass.
    rng: PRNG key for the random restarts (and a stochastic model's keys).
    x: float32 ``[B, H, W, C]`` (any ``[B, ...]``) in [0, 1].
    y: int ``[B]`` true labels. Examples with ``argmax logits_fn(x) != y``
      are returned unchanged.
    eps: budget in pixel units (e.g. 8/255 L-inf, 0.5 L2), > 0: a number,
      or an array of shape ``[]`` or ``[B]``; it may be traced. It is the
      success threshold and the radius of the random restarts; the attack
      itself minimises the norm.
    norm: ``'linf'``, ``'l2'`` or ``'l1'``.
    num_steps: FAB iterations per run (``n_iter``), >= 1.
    num_restarts: runs (``n_restarts``), >= 1.
    alpha_max: largest weight of the clean-point projection, in [0, 1].
    eta: overshoot factor of the projection step, > 0.
    beta: backward step towards ``x`` after a success, in [0, 1].

  Returns:
    float32 ``x_adv`` like ``x``: per example the smallest-norm adversarial
    point found by the first successful run, with ``||x_adv - x|| <= eps``
    in ``[0, 1]``, else ``x``. No gradient flows through it.

  Raises:
    ValueError: invalid norm, eps (value or shape), step/restart count,
      alpha_max, eta or beta, or fewer than 2 classes.
  """
  st, candidate = _untargeted_runs(logits_fn, rng, x, y, eps=eps, norm=norm,
                                   num_steps=num_steps, num_restarts=num_restarts,
                                   alpha_max=alpha_max, eta=eta, beta=beta)
  x_adv = _fab_runs(candidate, st, rng, norm, num_restarts)
  return jax.lax.stop_gradient(x_adv.reshape(st.x.shape))


def _untargeted_runs(logits_fn, rng, x, y, *, eps, norm, num_steps, num_restarts, alpha_max,
                     eta, beta):
  """``(setup, candidate)`` of untargeted FAB: run ``i`` is restart ``i``."""
  st = _setup("FAB", logits_fn, rng, x, y, eps, norm, num_steps, num_restarts, alpha_max,
              eta, beta)
  y = st.y
  num_classes = st.clean_logits.shape[-1]
  is_true = jax.nn.one_hot(y, num_classes, dtype=jnp.bool_)          # [B, K]
  cotangents = jnp.broadcast_to(jnp.eye(num_classes, dtype=jnp.float32)[:, None, :],
                                (num_classes,) + st.clean_logits.shape)  # [K, B, K]

  def closest_hyperplane(z, key):
    logits, vjp = jax.vjp(lambda zz: st.logits_of(zz, key), z)
    grads = jnp.moveaxis(jax.vmap(lambda ct: vjp(ct)[0])(cotangents), 0, 1)   # [B, K, D]
    df = logits - _gather(logits, y)[:, None]                                   # f_j - f_y
    dg = grads - jnp.take_along_axis(grads, y[:, None, None], axis=1)
    guard = max(1e-12, float(jnp.finfo(dg.dtype).tiny))
    dist = jnp.abs(df) / (guard + _dual_norm_last(dg, norm))
    ind = jnp.argmin(jnp.where(is_true, jnp.inf, dist), axis=1)
    w = jnp.take_along_axis(dg, ind[:, None, None], axis=1)[:, 0]
    return w, _gather(df, ind)

  def candidate(i):
    return _fab_single_run(closest_hyperplane, st.misclassified, st.x0, st.eps,
                           jax.random.fold_in(rng, i), i > 0, run_key=_run_keys(rng, i),
                           norm=norm, num_steps=num_steps, use_random_start=num_restarts > 1,
                           eta=eta, alpha_max=alpha_max, beta=beta)

  return st, candidate


def fab_pass(logits_fn: AnyLogitsFn, rng: jax.Array, x: jax.Array, y: jax.Array,
             sub: int | jax.Array, *, eps, norm: str = "linf", num_steps: int = 100,
             num_restarts: int = 5, alpha_max: float = 0.1, eta: float = 1.05,
             beta: float = 0.9) -> jax.Array:
  """Pass ``sub`` of untargeted FAB in the AutoAttack cascade: restart ``sub`` of :func:`fab`.

  The cascade runs the ``num_restarts`` passes in order, each on the points
  still robust after the previous ones (the reference's restart loop inside
  each batch); restart 0 starts at ``x``, later ones at a random point drawn
  from ``fold_in(rng, sub)``, as run ``sub`` of :func:`fab`. A point keeps its
  first success (misclassified, within ``eps``). ``sub`` may be traced;
  ``sub >= num_restarts`` returns ``x``. Arguments as :func:`fab`.

  Returns:
    float32 ``x_adv`` like ``x``: the run's smallest-norm adversarial point
    where it succeeds, else ``x``. No gradient flows through it.
  """
  st, candidate = _untargeted_runs(logits_fn, rng, x, y, eps=eps, norm=norm,
                                   num_steps=num_steps, num_restarts=num_restarts,
                                   alpha_max=alpha_max, eta=eta, beta=beta)
  x_adv = _fab_pass(candidate, st, rng, norm, jnp.asarray(sub, jnp.int32), num_restarts)
  return jax.lax.stop_gradient(x_adv.reshape(st.x.shape))
