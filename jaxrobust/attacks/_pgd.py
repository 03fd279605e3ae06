"""Projected gradient descent (Madry et al. 2018) and FGSM, as pure functions.

Sign convention (the one used throughout ``jaxrobust.attacks``): attack
objectives are MAXIMISED. An untargeted attack ascends ``loss(logits, y)``; a
targeted attack ascends ``-loss(logits, target)``.

API: ``attack(logits_fn, rng, x, y, **settings) -> x_adv`` where
``logits_fn(x) -> logits`` is pure (its BatchNorm mode is the caller's choice:
pass the eval view for evaluation), or a stochastic model
``logits_fn(x, key)`` marked with :func:`jaxrobust.attacks.stochastic`, which
gets a fresh key (derived from ``rng``) in every forward pass; ``x`` is float32
``[B, H, W, C]`` in [0, 1] and ``y`` int32 ``[B]``. The result is float32 like ``x``, ``stop_gradient``-ed,
within ``eps`` of ``x`` in the chosen norm and inside [0, 1]. With ``model_state`` the
model is ``logits_fn(x, state) -> (logits, state)`` and the state (a train-mode model's
BatchNorm running averages) is threaded through its forward passes in order.

The iteration is a ``lax.fori_loop`` whose body is unrolled ``unroll`` times:
compile time is bounded by ``unroll`` whatever ``num_steps`` is. On XLA:CPU a
while-loop body runs markedly slower than straight-line code (see
BENCHMARKS.md), so :func:`default_unroll` unrolls on CPU.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxrobust.attacks._losses import LOSSES
from jaxrobust.attacks._model import call_logits, is_stochastic, model_key
from jaxrobust.attacks._projections import (NORMS, RANDOM_STARTS, ascent_direction,
                                            project, random_init)
from jaxrobust.types import AnyLogitsFn

CPU_UNROLL = 10


def default_unroll(num_steps: int) -> int:
  """Loop unroll factor: ``min(num_steps, CPU_UNROLL)`` on CPU, 1 elsewhere."""
  if jax.default_backend() == "cpu":
    return max(1, min(int(num_steps), CPU_UNROLL))
  return 1


def _value_fn(loss: str, targeted: bool, kappa: float) -> Callable:
  """``(logits, target) -> per-example objective`` (maximised)."""
  if loss not in LOSSES:
    raise ValueError(f"unknown attack loss {loss!r}; use one of {sorted(LOSSES)}")
  base = LOSSES[loss]
  if loss == "cw":
    base = functools.partial(base, kappa=kappa)
  return (lambda logits, target: -base(logits, target)) if targeted else base


def _objective_fn(logits_fn, loss: str, targeted: bool, kappa: float) -> Callable:
  value_fn = _value_fn(loss, targeted, kappa)

  def objective(x_adv, target, key):
    logits = call_logits(logits_fn, x_adv, key)
    return value_fn(logits, target), logits

  return objective


def _is_success(logits, y, targeted):
  pred = jnp.argmax(logits, axis=-1)
  return (pred == y) if targeted else (pred != y)


def pgd(logits_fn: AnyLogitsFn, rng: jax.Array, x: jax.Array, y: jax.Array, *,
        eps: float, step_size: float, num_steps: int, norm: str = "linf",
        loss: str = "ce", random_start: str = "uniform", targeted: bool = False,
        num_restarts: int = 1, early_stop: bool = False, kappa: float = 50.0,
        ref_logits: jax.Array | None = None, unroll: int | None = None,
        return_trace: bool = False, model_state: Any = None) -> jax.Array | tuple:
  """PGD with L-inf or L2 threat model (Madry et al. 2018, eq. 2.1/2.2).

  Each step: ``x <- Proj_{B(x0, eps) ∩ [0,1]}(x + step_size * dir(grad))`` with
  ``dir = sign`` (L-inf) or ``g / ||g||_2`` (L2), gradient of the summed
  per-example objective.

  Args:
    logits_fn: pure ``x -> logits`` (float32 ``[B, K]``), or a stochastic
      ``(x, key) -> logits`` (:func:`jaxrobust.attacks.stochastic`): every
      forward pass then gets a fresh key derived from ``rng``. With
      ``model_state``: ``(x, state) -> (logits, new_state)``.
    rng: PRNG key for the random start(s) (and a stochastic model's keys).
    x: float32 ``[B, H, W, C]`` in [0, 1].
    y: int32 ``[B]``: true labels (untargeted) or target labels (targeted).
      Ignored by ``loss='kl'``. ``loss='ce'`` also takes float32 ``[B, K]``
      soft targets (Mixup/CutMix; soft-target CE) when neither
      ``early_stop`` nor restarts need a label.
    eps: budget in pixel units (e.g. 8/255 for L-inf, 0.5 for L2); > 0. A
      jax array (e.g. a traced eps warm-up schedule) is not checked and may
      be 0 (then ``x_adv = x``).
    step_size: step length in pixel units; > 0.
    num_steps: number of gradient steps; >= 1.
    norm: ``'linf'`` or ``'l2'``.
    loss: ``'ce'``, ``'cw'`` (hinge with ``kappa``), ``'margin'``, ``'kl'``
      (TRADES: KL(p(x) || p(x')) to ``ref_logits``), ``'dlr'``.
    random_start: ``'uniform'`` (L2: uniform in the ball), ``'uniform_radius'``
      (L2: uniform direction, radius ``U(0, 1) * eps``, Rice et al. / AWP;
      L-inf: as ``'uniform'``), ``'normal'`` (0.001 N(0,1)) or ``'none'``
      (:func:`jaxrobust.attacks.random_init`).
    targeted: ascend ``-loss(logits, y)`` towards target labels ``y``.
    num_restarts: independent runs; each example keeps its worst case (a
      successful run over an unsuccessful one, else the higher objective).
    early_stop: freeze an example once it is misclassified (target reached),
      as in Rice et al. 2020 ``attack_pgd(early_stop=True)``.
    kappa: confidence of the CW hinge loss.
    ref_logits: float32 ``[B, K]`` reference for ``loss='kl'``; defaults to
      ``stop_gradient(logits_fn(x))`` (one pass).
    unroll: ``fori_loop`` unroll factor; None -> :func:`default_unroll`.
    return_trace: also return the inputs of every forward pass of the model,
      in order (what a train-mode PyTorch attack updates BatchNorm running
      averages with).
    model_state: a pytree threaded through the model's forward passes, in
      order: each pass calls ``logits_fn(x_pass, state)`` with the state the
      previous pass returned, starting from ``model_state``. For a train-mode
      model with ``(x, state) -> model.apply(params, state, x, train=True)``
      it is the BatchNorm running averages, updated by every pass as
      PyTorch's train-mode attack does
      (:func:`jaxrobust.methods.attack_bn_updates`), with no pass run twice.
      The logits and so ``x_adv`` must not depend on the state (train-mode
      BatchNorm normalises with batch statistics): then ``x_adv`` equals that
      of the same attack on ``lambda x: logits_fn(x, model_state)[0]``.

  Returns:
    float32 ``x_adv`` like ``x``; no gradient flows through it. With
    ``return_trace``: ``(x_adv, trace)``, ``trace`` float32 ``[P, B, H, W,
    C]``: the clean ``x`` when ``loss='kl'`` computes its own reference, then
    the point of each of the ``num_steps`` gradient evaluations. With
    ``model_state``: ``(x_adv, state)`` (``(x_adv, trace, state)`` with both),
    the state after those ``P`` passes.

  Raises:
    ValueError: invalid norm, loss, random start, eps, step size or step
      count; ``return_trace`` or ``model_state`` with ``num_restarts > 1``;
      ``model_state`` with a stochastic ``logits_fn``.
  """
  if norm not in NORMS:
    raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")
  if random_start not in RANDOM_STARTS:
    raise ValueError(f"unknown random_start {random_start!r}; use one of {RANDOM_STARTS}")
  if not _is_array(eps) and not eps > 0 or not step_size > 0:
    raise ValueError(f"eps ({eps}) and step_size ({step_size}) must be > 0")
  if num_steps < 1 or num_restarts < 1:
    raise ValueError(f"num_steps ({num_steps}) and num_restarts ({num_restarts}) must be >= 1")
  stateful = model_state is not None
  if (return_trace or stateful) and num_restarts != 1:
    raise ValueError(f"return_trace and model_state need num_restarts == 1, got {num_restarts}")
  if stateful and is_stochastic(logits_fn):
    raise ValueError("model_state needs a deterministic logits_fn (x, state) -> (logits, "
                     "state), got a stochastic one")
  x = jax.lax.stop_gradient(x.astype(jnp.float32))
  state = model_state

  def forward(x_pass, key, state):
    """One forward pass: ``(logits, state)``; the state is threaded only when stateful."""
    if stateful:
      return logits_fn(x_pass, state)
    return call_logits(logits_fn, x_pass, key), state

  target = y
  own_ref = loss == "kl" and ref_logits is None
  if loss == "kl":
    if ref_logits is None:
      ref_logits, state = forward(x, model_key(rng, 0), state)
    target = jax.lax.stop_gradient(ref_logits)
  objective = _objective_fn(logits_fn, loss, targeted, kappa)  # restarts (stateless)
  value_fn = _value_fn(loss, targeted, kappa)

  def summed_objective(x_adv, key, state):
    logits, state = forward(x_adv, key, state)
    return jnp.sum(value_fn(logits, target)), (logits, state)

  grad_fn = jax.grad(summed_objective, has_aux=True)
  unroll = default_unroll(num_steps) if unroll is None else unroll

  def step(r, i, x_adv, state=None):
    g, (logits, state) = grad_fn(x_adv, model_key(rng, 1, r, i), state)
    x_new = project(x_adv + step_size * ascent_direction(g, norm), x, eps, norm)
    if early_stop:
      active = ~_is_success(logits, y, targeted)
      x_new = jnp.where(active[:, None, None, None], x_new, x_adv)
    return x_new, state

  def loop(body, carry):
    if unroll >= num_steps:  # straight-line code: no while loop at all.
      for i in range(num_steps):
        carry = body(i, carry)
      return carry
    return jax.lax.fori_loop(0, num_steps, body, carry, unroll=unroll)

  def start(key):
    return project(x + random_init(key, x, eps, norm, random_start), x, eps, norm)

  def run(key, r):
    return loop(lambda i, x_adv: step(r, i, x_adv)[0], start(key))

  def run_passes(key, state):
    """One run (restart 0) that also records the passes' inputs and / or threads the state."""
    trace = jnp.zeros((num_steps,) + x.shape, x.dtype) if return_trace else None

    def body(i, carry):
      x_a, st, tr = carry
      x_new, st = step(0, i, x_a, st)
      return x_new, st, (None if tr is None else tr.at[i].set(x_a))

    x_adv, state, trace = loop(body, (start(key), state, trace))
    out = (jax.lax.stop_gradient(x_adv),)
    if return_trace:
      if own_ref:  # the reference pass on the clean x came first.
        trace = jnp.concatenate([x[None], trace])
      out += (jax.lax.stop_gradient(trace),)
    if stateful:
      out += (jax.lax.stop_gradient(state),)
    return out

  if return_trace or stateful:
    return run_passes(rng, state)
  if num_restarts == 1:
    return jax.lax.stop_gradient(run(rng, 0))

  def restart(r, best):
    best_x, best_obj, best_succ = best
    x_r = run(jax.random.fold_in(rng, r), r)
    obj, logits = objective(x_r, target, model_key(rng, 2, r))
    succ = _is_success(logits, y, targeted)
    better = (succ & ~best_succ) | ((succ == best_succ) & (obj > best_obj))
    return (jnp.where(better[:, None, None, None], x_r, best_x),
            jnp.where(better, obj, best_obj), succ | best_succ)

  init = (x, jnp.full(x.shape[:1], -jnp.inf, jnp.float32), jnp.zeros(x.shape[:1], bool))
  best_x, _, _ = jax.lax.fori_loop(0, num_restarts, restart, init)
  return jax.lax.stop_gradient(best_x)


def _is_array(v) -> bool:
  """A jax array (traced or not): a scheduled value whose range the caller guarantees."""
  return isinstance(v, jax.Array)


def _sum_aux(value_and_logits):
  value, logits = value_and_logits
  return jnp.sum(value), logits


def fgsm(logits_fn: AnyLogitsFn, rng: jax.Array, x: jax.Array, y: jax.Array, *,
         eps: float, step_size: float | None = None, norm: str = "linf", loss: str = "ce",
         random_start: str = "none", targeted: bool = False, kappa: float = 50.0,
         ref_logits: jax.Array | None = None, return_trace: bool = False,
         model_state: Any = None) -> jax.Array | tuple:
  """Fast gradient sign method (Goodfellow et al. 2015): one projected step.

  With ``random_start='uniform'`` and ``step_size=1.25 * eps`` this is the
  FGSM-RS attack of "Fast is better than free" (Wong et al. 2020, Alg. 3).
  Arguments and result as :func:`pgd`; ``step_size`` defaults to ``eps``.
  """
  return pgd(logits_fn, rng, x, y, eps=eps, step_size=eps if step_size is None else step_size,
             num_steps=1, norm=norm, loss=loss, random_start=random_start,
             targeted=targeted, kappa=kappa, ref_logits=ref_logits, unroll=1,
             return_trace=return_trace, model_state=model_state)
