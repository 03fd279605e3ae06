"""PGD with perturbation random masking (PRM, Mo et al. NeurIPS 2022), registered as ``pgd_prm``.

Each attack step draws a FRESH patch mask ``M`` aligned to the ViT's patch
grid: ``int(N * (1 - keep_prob))`` of the ``N`` patches, chosen uniformly at
random, are masked; the mask is shared by every image of the batch and every
channel (``mo666666/When-Adversarial-Training-Meets-Vision-Transformers:
train_cifar.py``, ``pgd_attack``: ``random.shuffle(ids)``, the first
``num_patch`` ids zeroed in ``add_noise_mask[:, :, rows, cols]``).

Two update orders (``prm_mode``), with ``delta = x_adv - x``:

* ``'faithful'`` (default; the official code): ``delta <- delta * M``; the
  gradient is taken at ``x + delta * M``; ``delta <- Proj(delta * M + alpha *
  sign(g))``. Masked patches restart from 0 at every step and get one step
  of their own gradient, so the result is NOT zero on the last mask's
  patches; at ``keep_prob = 0`` (every patch masked) the result is one
  ``alpha``-step from zero (``x + Proj(alpha * sign(grad at x))``).
* ``'strict'`` (the paper's ``delta * M``): the faithful update followed by
  ``delta <- delta * M`` with the same step's mask, so the perturbation
  carried between steps and returned has no value on the patches masked in
  the last step; at ``keep_prob = 0`` the result is ``x`` itself.

``keep_prob = 1`` masks nothing: the result is bit for bit :func:`pgd` with
the same ``rng`` (same random start, same model keys, same loop structure).
``keep_prob`` may be a traced scalar (the method's schedule r(t), see
:func:`jaxrobust.methods.vit_recipe.mo_keep_prob`); the masked count is
computed in float32 (``floor(N * (1 - r))``). ``eps`` may be a traced scalar
too (an eps warm-up schedule; 0 gives ``x``).

``loss='kl'`` is TRADES's inner max with PRM (the official ``--method TRADES
--PRM`` branch of ``train_cifar.py``): the summed ``KL(p(x) || p(x + delta
* M))`` to the clean logits ``ref_logits`` (default: one pass on ``x``, a
constant), as :func:`jaxrobust.attacks.pgd`.

Masking is done with ``where(M, x_adv, x)`` rather than ``x + (x_adv - x) * M``
so that kept pixels are bit-identical to the unmasked iterate.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrobust.attacks._builtins import _validator
from jaxrobust.attacks._model import call_logits, model_key
from jaxrobust.attacks._pgd import _is_array, _objective_fn, _sum_aux, default_unroll
from jaxrobust.attacks._projections import (NORMS, RANDOM_STARTS, ascent_direction, project,
                                            random_init)
from jaxrobust.attacks.registry import AttackSpec, register_attack
from jaxrobust.errors import ConfigError
from jaxrobust.types import AnyLogitsFn

PRM_MODES = ("faithful", "strict")
# fold_in datum of the mask stream ('prm'): apart from the random start (rng itself) and the
# model keys (jaxrobust.attacks._model's stream).
_MASK_STREAM = 0x70726D


def _grid(x_shape, patch_size) -> tuple[int, int, int, int]:
  ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
  h, w = x_shape[1], x_shape[2]
  if ph < 1 or pw < 1 or h % ph or w % pw:
    raise ValueError(f"PRM: image {h}x{w} is not a multiple of patch_size {ph}x{pw}; use the "
                     f"ViT's patch size")
  return h // ph, w // pw, ph, pw


def num_masked_patches(num_patches: int, keep_prob) -> jax.Array:
  """``int(N * (1 - keep_prob))`` as int32 (float32 arithmetic; ``keep_prob`` in [0, 1])."""
  r = jnp.clip(jnp.asarray(keep_prob, jnp.float32), 0.0, 1.0)
  return jnp.floor(jnp.float32(num_patches) * (1.0 - r)).astype(jnp.int32)


def patch_keep_mask(key: jax.Array, x_shape, patch_size, keep_prob) -> jax.Array:
  """A random patch mask: bool ``[1, H, W, 1]``, False on the masked patches.

  ``num_masked_patches(N, keep_prob)`` of the ``N = (H/ph)(W/pw)`` grid
  patches, drawn uniformly without replacement (a random permutation, its
  first ones masked), are False; the mask broadcasts over batch and channels.

  Args:
    key: PRNG key of this attack step.
    x_shape: ``(B, H, W, C)``.
    patch_size: int or ``(ph, pw)``, dividing ``H`` and ``W``.
    keep_prob: r in [0, 1], Python float or traced scalar.

  Raises:
    ValueError: ``H`` or ``W`` is not a multiple of the patch size.
  """
  gh, gw, ph, pw = _grid(x_shape, patch_size)
  n = gh * gw
  perm = jax.random.permutation(key, n)
  keep_sorted = jnp.arange(n) >= num_masked_patches(n, keep_prob)
  keep = jnp.zeros((n,), bool).at[perm].set(keep_sorted).reshape(gh, gw)
  keep = jnp.repeat(jnp.repeat(keep, ph, axis=0), pw, axis=1)
  return keep[None, :, :, None]


def pgd_prm(logits_fn: AnyLogitsFn, rng: jax.Array, x: jax.Array, y: jax.Array, *,
            eps: float, step_size: float, num_steps: int, patch_size=4, keep_prob=1.0,
            prm_mode: str = "faithful", norm: str = "linf", loss: str = "ce",
            random_start: str = "uniform", kappa: float = 50.0,
            ref_logits: jax.Array | None = None, unroll: int | None = None) -> jax.Array:
  """PGD whose perturbation is randomly masked patch by patch at every step (PRM).

  Args:
    logits_fn: ``x -> logits`` or a stochastic ``(x, key) -> logits``
      (e.g. the ARD logits function of
      :func:`jaxrobust.methods.vit_recipe.attention_random_drop_logits_fn`).
    rng: PRNG key: random start, patch masks, model keys (the same streams as
      :func:`jaxrobust.attacks.pgd` for the start and the model keys).
    x: float32 ``[B, H, W, C]`` in [0, 1]; ``H``, ``W`` multiples of the patch.
    y: int32 ``[B]`` labels (untargeted), or float32 ``[B, K]`` soft targets
      with ``loss='ce'`` (Mixup/CutMix); ignored by ``loss='kl'``.
    eps, step_size: pixel units, > 0 (``eps`` may be a jax array, e.g. a
      traced warm-up schedule; it is then not checked and may be 0).
    num_steps: >= 1.
    patch_size: the ViT's patch size (int or ``(ph, pw)``).
    keep_prob: r in [0, 1]: ``int(N (1 - r))`` patches are masked per step;
      1 = plain PGD.
    prm_mode: ``'faithful'`` (official update order) or ``'strict'``.
    norm, loss, random_start, kappa, ref_logits, unroll: as
      :func:`jaxrobust.attacks.pgd`.

  Returns:
    float32 ``x_adv`` like ``x`` within ``eps`` and [0, 1]; no gradient.

  Raises:
    ValueError: an unknown mode / norm / start, bad sizes or counts.
  """
  if prm_mode not in PRM_MODES:
    raise ValueError(f"unknown prm_mode {prm_mode!r}; use one of {PRM_MODES}")
  if norm not in NORMS:
    raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")
  if random_start not in RANDOM_STARTS:
    raise ValueError(f"unknown random_start {random_start!r}; use one of {RANDOM_STARTS}")
  if (not _is_array(eps) and not eps > 0) or not step_size > 0 or num_steps < 1:
    raise ValueError(f"eps ({eps}), step_size ({step_size}) must be > 0 and num_steps "
                     f"({num_steps}) >= 1")
  _grid(x.shape, patch_size)
  x = jax.lax.stop_gradient(x.astype(jnp.float32))
  target = y
  if loss == "kl":  # TRADES: KL to the clean output, a constant (one pass, as pgd).
    target = jax.lax.stop_gradient(call_logits(logits_fn, x, model_key(rng, 0))
                                   if ref_logits is None else ref_logits)
  objective = _objective_fn(logits_fn, loss, False, kappa)
  grad_fn = jax.grad(lambda xa, key: _sum_aux(objective(xa, target, key)), has_aux=True)
  unroll = default_unroll(num_steps) if unroll is None else unroll
  mask_rng = jax.random.fold_in(rng, _MASK_STREAM)

  def step(i, x_adv):
    keep = patch_keep_mask(jax.random.fold_in(mask_rng, i), x.shape, patch_size, keep_prob)
    x_masked = jnp.where(keep, x_adv, x)  # delta <- delta * M
    g, _ = grad_fn(x_masked, model_key(rng, 1, 0, i))
    x_new = project(x_masked + step_size * ascent_direction(g, norm), x, eps, norm)
    if prm_mode == "strict":
      x_new = jnp.where(keep, x_new, x)
    return x_new

  x_adv = project(x + random_init(rng, x, eps, norm, random_start), x, eps, norm)
  if unroll >= num_steps:
    for i in range(num_steps):
      x_adv = step(i, x_adv)
  else:
    x_adv = jax.lax.fori_loop(0, num_steps, step, x_adv, unroll=unroll)
  return jax.lax.stop_gradient(x_adv)


def _validate(cfg):
  """Config checks of ``pgd_prm`` (ConfigError naming the bad setting)."""
  _validator("pgd_prm", step_size_required=True, steps_required=True)(cfg)
  if cfg.get("prm_mode", "faithful") not in PRM_MODES:
    raise ConfigError(f"attack 'pgd_prm': prm_mode must be one of {PRM_MODES}, got "
                      f"{cfg['prm_mode']!r}")
  keep = cfg.get("keep_prob", 1.0)
  if not 0 <= keep <= 1:
    raise ConfigError(f"attack 'pgd_prm': keep_prob must be in [0, 1], got {keep}")
  p = cfg.get("patch_size", 4)
  if not (int(p) >= 1 if isinstance(p, int) else all(int(v) >= 1 for v in p)):
    raise ConfigError(f"attack 'pgd_prm': patch_size must be >= 1, got {p}")


register_attack(AttackSpec(
    "pgd_prm", pgd_prm,
    settings={"eps", "step_size", "num_steps", "norm", "loss", "random_start", "kappa",
              "unroll", "patch_size", "keep_prob", "prm_mode"},
    required={"eps", "step_size", "num_steps"}, validate=_validate,
    doc="PGD with perturbation random masking (Mo et al. 2022), ViT patch grid"))

