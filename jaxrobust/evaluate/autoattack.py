"""AutoAttack (Croce & Hein 2020) over a dataset: the cascade, checks, resume.

Reference: ``fra31/auto-attack:autoattack/autoattack.py`` (``AutoAttack.
run_standard_evaluation``) and ``checks.py``. The cascade:

1. clean predictions; initially misclassified points count as non-robust;
2. for each attack in order, only the points still robust are attacked, each
   attack starting from the clean image; a point whose adversarial example is
   misclassified becomes non-robust and keeps that example;
3. the final robust accuracy is the point-wise worst case; per-attack
   cumulative robust accuracy and wall time are reported.

Versions: ``standard`` = APGD-CE (1 restart) -> APGD-T (9 targets) -> FAB-T
(9 targets) -> Square (5,000 queries); ``plus`` = APGD-CE x5, APGD-DLR x5,
FAB x5, Square (1 restart), APGD-T (9 targets), FAB-T (9 targets, 1 restart):
as in the reference's ``set_version``, whose ``fab-t`` branch sets
``fab.n_restarts = 1``; ``rand`` = APGD-CE, APGD-DLR with EOT 20 (for
randomised defences); ``custom`` = any list of attacks registered with an
AutoAttack hook. Square runs with the p schedule read on the iteration itself,
not rescaled to its 5,000 queries (the reference builds it with
``resc_schedule=False``), in every version.

The attacks come from the attack registry (:mod:`jaxrobust.attacks.registry`):
each cascade entry is a registered attack with an
:class:`~jaxrobust.attacks.AutoAttackHook` that names the
:class:`AutoAttackSettings` fields setting it and its passes. Names use the
registry's spelling (``apgd_ce``, ``apgd_dlr``, ``apgd_t``, ``fab``,
``fab_t``, ``square``); the reference's ``apgd-ce``, ``fab-t``, ... are
accepted as aliases wherever a name is typed.

Stochastic models: ``logits_fn`` may be a stochastic model
(:func:`jaxrobust.attacks.stochastic`); every forward pass of the cascade
(clean predictions, attacks, checks) then gets a fresh key. The reference's
``check_randomized`` (outputs on the same input differ between calls; here:
between calls with different keys) warns when such a model is evaluated with
a version other than ``rand``.

Deliberate differences: the still-robust points are gathered on the host and
attacked in fixed-size, device-sharded batches (padding rows are ignored);
APGD-T's and FAB-T's (target class, restart) runs and the restarts of APGD,
FAB and Square are each one pass over the points still robust after the
previous pass (the reference does the same inside each batch of 250); random
streams differ from PyTorch's. Compaction (``compact=True``, the default,
deterministic models): inside an APGD pass (APGD-CE, APGD-DLR, each APGD-T
target) the points already misclassified leave the attacked batch at each
step-size checkpoint, and inside a Square pass every
:data:`~jaxrobust.attacks._square.SQUARE_SEGMENT_QUERIES` queries, where the
reference attacks them to the last iteration; the remaining points are
re-padded to :func:`padded_size` rows. Flags and adversarial examples are
identical to attacking the whole chunk (tested), because every per-point
quantity of these attacks depends on that point only (Square's random draws
included: they come from a per-point stream), APGD keeps a point's first
misclassifying iterate and Square never updates a fooled point. FAB and FAB-T
minimise the norm, so a run cannot be cut short (a fooled point's iterate
keeps improving until the run ends); their compaction is between runs, which
the passes give in both modes. The reference's ``check_dynamic`` (Python
tracing of backward hooks) has no meaning for a jitted pure function and is
replaced by a batch-independence check (eval-mode BatchNorm).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from jaxrobust.attacks import (attack_names, call_logits, dlr_loss, get_attack, is_stochastic,
                               model_key, resolve_attack_name)
from jaxrobust.errors import AutoAttackPreempted, CheckpointError, ConfigError
from jaxrobust.parallel import check_batch_size, data_sharding, host_array, replicated, shard_rows
from jaxrobust.types import AnyLogitsFn

VERSIONS = {
    "standard": ("apgd_ce", "apgd_t", "fab_t", "square"),
    "plus": ("apgd_ce", "apgd_dlr", "fab", "square", "apgd_t", "fab_t"),
    "rand": ("apgd_ce", "apgd_dlr"),
}


def autoattack_names() -> list[str]:
  """The registered attacks the cascade can run (those with an AutoAttack hook)."""
  return attack_names(autoattack=True)


def canonical_attack_names(attacks) -> tuple:
  """AutoAttack attack names in the registry's spelling (``'apgd-ce'`` -> ``'apgd_ce'``).

  Raises:
    ConfigError: a name that is not registered or has no AutoAttack hook; the
      message lists the valid names.
  """
  out, bad = [], []
  for a in attacks:
    try:
      name = resolve_attack_name(a)
    except ConfigError:
      bad.append(a)
      continue
    if get_attack(name).autoattack is None:
      bad.append(a)
    out.append(name)
  if bad:
    raise ConfigError(f"unknown AutoAttack attack(s) {bad}; choose from {autoattack_names()} "
                      f"(or their hyphen spellings, e.g. 'apgd-ce', 'fab-t')")
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class AutoAttackSettings:
  """Per-version attack settings (reference ``set_version``).

  Attributes:
    eps: budget in pixel units (> 0).
    norm: ``'linf'`` or ``'l2'``.
    version: ``'standard'``, ``'plus'``, ``'rand'`` or ``'custom'``.
    attacks: the cascade, registry names in order.
    apgd_restarts, apgd_steps, apgd_t_targets, fab_restarts, fab_steps,
    fab_t_targets, fab_t_restarts, square_queries, square_restarts,
    square_rescale_schedule, eot_iter: the attacks' settings (each registered
      attack's :class:`AutoAttackHook` names the fields it reads).
      ``fab_restarts`` is untargeted FAB's, ``fab_t_restarts`` FAB-T's (the
      reference runs FAB-T with 1 restart in every version);
      ``square_rescale_schedule=False`` is the reference's
      ``resc_schedule=False``.
  """
  eps: float
  norm: str = "linf"
  version: str = "standard"
  attacks: tuple = ()
  apgd_restarts: int = 1
  apgd_steps: int = 100
  apgd_t_targets: int = 9
  fab_restarts: int = 1
  fab_steps: int = 100
  fab_t_targets: int = 9
  fab_t_restarts: int = 1
  square_queries: int = 5000
  square_restarts: int = 1
  square_rescale_schedule: bool = False
  eot_iter: int = 1

  @classmethod
  def for_version(cls, eps: float, norm: str = "linf", version: str = "standard",
                  attacks=None, **overrides) -> "AutoAttackSettings":
    """Settings of ``version``; ``attacks`` is required for ``'custom'``.

    Args:
      eps: budget in pixel units (8/255 L-inf, 0.5 L2 in the literature).
      norm: ``'linf'`` or ``'l2'``.
      version: ``'standard'``, ``'plus'``, ``'rand'`` or ``'custom'``.
      attacks: for ``'custom'``: registered names or aliases, e.g.
        ``('apgd_ce', 'square')`` or ``('apgd-ce', 'square')``.
      **overrides: any other field (e.g. ``apgd_steps=10``).

    Raises:
      ConfigError: unknown version/attack/norm, invalid eps.
    """
    if norm not in ("linf", "l2"):
      raise ConfigError(f"AutoAttack norm must be 'linf' or 'l2', got {norm!r}")
    if not eps > 0:
      raise ConfigError(f"AutoAttack eps must be > 0 (pixel units), got {eps}")
    if version == "custom":
      if not attacks:
        raise ConfigError(f"version='custom' needs a list of attacks from {autoattack_names()}")
    elif version in VERSIONS:
      if attacks:
        raise ConfigError(f"attacks are fixed by version={version!r}; use version='custom'")
      attacks = VERSIONS[version]
    else:
      raise ConfigError(f"unknown AutoAttack version {version!r}; use one of "
                        f"{sorted(VERSIONS) + ['custom']}")
    attacks = canonical_attack_names(attacks)
    kw = dict(eps=float(eps), norm=norm, version=version, attacks=tuple(attacks))
    if version == "plus":
      # Reference set_version('plus'): APGD (CE and DLR) and untargeted FAB
      # x5; Square keeps its 1 restart and FAB-T runs with 1 (fab-t branch).
      kw.update(apgd_restarts=5, fab_restarts=5)
    if version == "rand":
      kw.update(eot_iter=20)
    kw.update(overrides)
    return cls(**kw)


def attack_settings(name: str, s: AutoAttackSettings) -> dict:
  """The settings the cascade passes to registered attack ``name`` under ``s``.

  ``eps`` and ``norm``, the fields named by the attack's
  :class:`~jaxrobust.attacks.AutoAttackHook`, and the spec's fixed settings
  (e.g. ``loss='ce'`` for ``apgd_ce``).

  Raises:
    ConfigError: unknown name or one without an AutoAttack hook.
  """
  spec = get_attack(canonical_attack_names([name])[0])
  cfg = {"eps": s.eps, "norm": s.norm}
  cfg.update({k: getattr(s, field) for k, field in spec.autoattack.settings.items()})
  cfg.update(spec.fixed)
  return cfg


def _sub_runs(name: str, s: AutoAttackSettings) -> int:
  """Number of passes of an attack (e.g. APGD's restarts, APGD-T's target classes)."""
  hook = get_attack(name).autoattack
  return 1 if hook.passes is None else int(hook.passes(attack_settings(name, s)))


def _attack_fn(name: str, s: AutoAttackSettings) -> Callable:
  """``fn(logits_fn, key, x, y, sub) -> x_adv`` for pass ``sub`` of registered attack ``name``."""
  spec = get_attack(name)
  cfg = attack_settings(name, s)
  if spec.autoattack.run is not None:
    run = spec.autoattack.run

    def fn(logits_fn, key, x, y, sub):
      return run(logits_fn, key, x, y, sub, **cfg)
  else:
    attack = spec.fn

    def fn(logits_fn, key, x, y, sub):
      del sub
      return attack(logits_fn, key, x, y, **cfg)
  return fn


RANDOMIZED_DEFENSE = ("the model's output is not deterministic: it seems to be a randomized "
                      "defense; use version='rand' (aa-rand)")


def _l2_normalized(out):
  out = np.asarray(out, np.float64)
  return out / (np.sqrt(np.sum(out ** 2, axis=-1, keepdims=True)) + 1e-10)


def _jitted_forward(logits_fn):
  """``(x, key) -> logits`` of ``logits_fn`` as one compiled program.

  The checks below call the model outside the attacks' programs; run eagerly,
  every operation of the network is compiled and dispatched on its own, which
  took the AutoAttack process's memory from ~0.5 to ~1.3 GiB on the CIFAR-10
  CNN (retained compiler and allocator memory) and is slower.
  """
  return jax.jit(lambda z, k: call_logits(logits_fn, z, k))


def check_randomized(logits_fn: AnyLogitsFn, x: jax.Array, y: jax.Array, key: jax.Array,
                     n: int = 5, alpha: float = 1e-4, forward=None) -> bool:
  """Whether the model looks randomised: its outputs on ``x`` differ between calls.

  The reference's ``checks.check_randomized``: ``n`` forward passes on the same
  batch; randomised when the number of correct predictions changes or two
  L2-normalised outputs differ by more than ``alpha`` (L2 per example). A
  stochastic model (:func:`jaxrobust.attacks.stochastic`) is called with ``n``
  different keys (folded from ``key``); a plain one is simply called ``n`` times.

  Args:
    logits_fn: the model, plain or stochastic.
    x: float32 ``[B, H, W, C]`` in [0, 1]; y: int ``[B]`` labels.
    key: PRNG key of the passes.
    n: number of passes (>= 2).
    alpha: tolerance on the normalised outputs.
    forward: ``logits_fn`` already compiled as ``(x, key) -> logits``
      (default: compiled here), so a caller that also runs it compiles it once.

  Returns:
    True when the outputs differ (the reference warns then).
  """
  fwd = _jitted_forward(logits_fn) if forward is None else forward
  outs = [np.asarray(fwd(x, model_key(key, i))) for i in range(n)]
  correct = [int(np.sum(np.argmax(o, -1) == np.asarray(y))) for o in outs]
  normed = [_l2_normalized(o) for o in outs]
  max_diff = max(float(np.max(np.sqrt(np.sum((normed[i] - normed[j]) ** 2, axis=-1))))
                 for i in range(n) for j in range(i + 1, n))
  return len(set(correct)) > 1 or max_diff > alpha


def sanity_checks(logits_fn: AnyLogitsFn, x: jax.Array, y: jax.Array, s: AutoAttackSettings,
                  n_classes: int, key: jax.Array | None = None) -> list[str]:
  """The reference's checks (``fra31/auto-attack:autoattack/checks.py``) on one batch.

  Returns (and warns with ``UserWarning``) the messages:

  * non-deterministic outputs (:func:`check_randomized`; a randomised defence
    -> use version 'rand'), skipped for version 'rand' as in the reference;
  * outputs that look like probabilities (pass logits);
  * outputs that depend on the rest of the batch (BatchNorm in train mode);
  * too few classes for DLR / APGD-T / FAB-T targets;
  * correctly classified points with zero gradient of the DLR loss (gradient
    masking); the reference counts misclassified points too, for which DLR can
    be constant, so this check is restricted to the points that get attacked.

  Args:
    logits_fn: the model, plain or stochastic (then every pass gets a fresh key).
    x: float32 ``[B, H, W, C]`` in [0, 1]; y: int ``[B]`` labels.
    s: the AutoAttack settings.
    n_classes: K.
    key: PRNG key of a stochastic model's passes (default ``PRNGKey(0)``).
  """
  key = jax.random.PRNGKey(0) if key is None else key
  forward = _jitted_forward(logits_fn)
  fwd = lambda z, i: forward(z, model_key(key, 100 + i))
  msgs = []
  if s.version != "rand" and check_randomized(logits_fn, x, y, key, forward=forward):
    msgs.append(RANDOMIZED_DEFENSE)
  out = np.asarray(fwd(x, 0))
  if out.max() < 1 + 1e-5 and out.min() > -1e-5 and np.all(np.abs(out.sum(-1) - 1) < 1e-5):
    msgs.append("the output looks like a probability distribution: pass logits, not softmax")
  if x.shape[0] > 1:
    single = np.asarray(fwd(x[:1], 0))
    if not np.allclose(single, out[:1], atol=1e-4, rtol=1e-4):
      msgs.append("the output of an example depends on the rest of the batch (BatchNorm in "
                  "train mode?): evaluate the eval view (running averages)")
  if any(a in s.attacks for a in ("apgd_dlr", "apgd_t")) and n_classes <= 3:
    msgs.append(f"with {n_classes} classes the (targeted) DLR loss is not defined")
  if "apgd_t" in s.attacks and s.apgd_t_targets + 1 > n_classes:
    msgs.append(f"APGD-T uses {s.apgd_t_targets} target classes but only {n_classes - 1} exist")
  if "fab_t" in s.attacks and s.fab_t_targets + 1 > n_classes:
    msgs.append(f"FAB-T uses {s.fab_t_targets} target classes but only {n_classes - 1} exist")
  if n_classes >= 3:
    g = jax.jit(jax.grad(lambda z, k: jnp.sum(dlr_loss(call_logits(logits_fn, z, k), y))))(
        x, model_key(key, 101))
    # Only correctly classified points are attacked; for a misclassified point
    # whose true class ranks third, DLR is constant (= 1) and its gradient 0.
    correct = np.argmax(out, -1) == np.asarray(y)
    zero = int(np.sum((np.abs(np.asarray(g)).reshape(len(x), -1).sum(-1) == 0) & correct))
    if zero:
      msgs.append(f"{zero} points have zero gradient: gradient-based attacks may be unreliable")
  for m in msgs:
    warnings.warn(f"AutoAttack check: {m}", stacklevel=2)
  return msgs


@dataclasses.dataclass
class AutoAttackResult:
  """Outcome of :func:`run_autoattack`.

  Attributes:
    clean_accuracy: fraction of points classified correctly.
    robust_accuracy: ``{'clean': ..., attack: cumulative robust accuracy}`` in
      cascade order; the last value is the AutoAttack robust accuracy.
    robust: bool ``[N]`` point-wise robust flags after all attacks.
    x_adv: float32 ``[N, H, W, C]``: the adversarial example of each broken
      point, the clean image elsewhere.
    seconds: wall time per attack.
    warnings: messages of the sanity checks.
  """
  clean_accuracy: float
  robust_accuracy: dict
  robust: np.ndarray
  x_adv: np.ndarray
  seconds: dict
  warnings: list


def _state_paths(state_dir):
  return os.path.join(state_dir, "aa_state.json"), os.path.join(state_dir, "aa_state.npz")


def _save_state(state_dir, meta, robust, x_adv):
  os.makedirs(state_dir, exist_ok=True)
  js, npz = _state_paths(state_dir)
  tmp = npz + ".tmp.npz"
  np.savez(tmp, robust=robust, x_adv=x_adv)
  os.replace(tmp, npz)
  with open(js + ".tmp", "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
  os.replace(js + ".tmp", js)


def _load_state(state_dir, expect):
  js, npz = _state_paths(state_dir)
  if not os.path.exists(js):
    return None
  try:
    with open(js, encoding="utf-8") as f:
      meta = json.load(f)
    with np.load(npz) as z:
      robust, x_adv = z["robust"], z["x_adv"]
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"AutoAttack state in {state_dir} is unreadable ({e}); delete it to "
                          f"start over") from e
  # States written before the registry spelled the attacks 'apgd-ce', 'fab-t', ...
  canon = lambda n: resolve_attack_name(n) if isinstance(n, str) and "-" in n else n
  meta["attacks"] = [canon(a) for a in meta.get("attacks", [])]
  meta["done"] = [f"{canon(t.rsplit(':', 1)[0])}:{t.rsplit(':', 1)[1]}"
                  for t in meta.get("done", [])]
  for field in ("robust_accuracy", "seconds"):
    meta[field] = {canon(k): v for k, v in meta.get(field, {}).items()}
  for k, v in expect.items():
    if meta.get(k) != v:
      raise CheckpointError(f"AutoAttack state in {state_dir} was written for {k}="
                            f"{meta.get(k)!r}, not {v!r}; use another --aa_state dir or delete it")
  return meta, robust, x_adv


PAD_QUANTUM = 32  # rows: short chunks are padded to a multiple of this (and of the mesh size).


def padded_size(n: int, batch_size: int, n_dev: int = 1) -> int:
  """Rows a chunk of ``n`` still-robust points is padded to before it is attacked.

  ``n >= PAD_QUANTUM``: the next multiple of :data:`PAD_QUANTUM`; fewer points:
  the next power of two (a lone robust point is attacked as 1 row, not 32, which
  matters most for EOT attacks that run 20 passes per step). The result is a
  multiple of ``n_dev`` (the mesh size) and at most ``batch_size``. Each
  distinct size compiles once, so sizes come from a small fixed set.

  Raises:
    ValueError: ``n`` not in ``1..batch_size``.
  """
  if not 1 <= n <= batch_size:
    raise ValueError(f"chunk of {n} points for a batch of {batch_size}")
  size = PAD_QUANTUM * -(-n // PAD_QUANTUM) if n >= PAD_QUANTUM else 1 << (n - 1).bit_length()
  return min(batch_size, n_dev * -(-size // n_dev))


def _segmented(name: str, s: AutoAttackSettings):
  """The registered attack's :class:`~jaxrobust.attacks.registry.AttackSegments`, or None."""
  hook = get_attack(name).autoattack
  return None if hook.segments is None else hook.segments(**attack_settings(name, s))


def _tree_take(tree, rows):
  return jax.tree_util.tree_map(lambda a: a[rows], tree)


def _run_compacted(segs, init, step, xb, yb, key, sub, n_real, batch_size, n_dev, put):
  """One pass of a segmented attack on a padded chunk, dropping finished rows between segments.

  The rows not yet done are gathered and padded to :func:`padded_size` rows
  (a few fixed sizes, each compiled once) before every segment; a done row's
  result is final (:class:`~jaxrobust.attacks.registry.AttackSegments`), so the
  adversarial examples equal those of the whole chunk run through every segment.
  ``put`` places a host array of rows on the mesh. Returns ``x_adv`` of the
  ``n_real`` real rows (numpy).
  """
  state = jax.tree_util.tree_map(lambda a: np.array(host_array(a)),
                                 init(put(xb), put(yb), key, sub))
  live = np.arange(len(xb)) < n_real
  live &= ~np.asarray(segs.done(state))
  for seg in range(segs.count):
    act = np.flatnonzero(live)
    if not len(act):
      break
    size = padded_size(len(act), batch_size, n_dev)
    rows = np.concatenate([act, np.full(size - len(act), act[0])])
    new = step(put(xb[rows]), put(yb[rows]), key, sub,
               jax.tree_util.tree_map(put, _tree_take(state, rows)), jnp.int32(seg))
    new = jax.tree_util.tree_map(lambda a: host_array(a)[: len(act)], new)

    def update(full, part):
      full[act] = part
      return full
    state = jax.tree_util.tree_map(update, state, new)
    live[act] &= ~np.asarray(segs.done(new))
  return np.asarray(segs.result(state))[:n_real]


def run_autoattack(logits_fn: AnyLogitsFn, x: np.ndarray, y: np.ndarray, settings:
                   AutoAttackSettings, *, batch_size: int = 250, mesh=None, seed: int = 0,
                   state_dir: str | None = None, progress: bool = True,
                   should_stop: Callable[[], str | None] | None = None,
                   compact: bool = True) -> AutoAttackResult:
  """Runs the AutoAttack cascade on ``(x, y)``.

  Args:
    logits_fn: pure ``x -> logits`` of the eval-mode model, float32
      ``[B, K]``, or a stochastic ``(x, key) -> logits``
      (:func:`jaxrobust.attacks.stochastic`; every forward pass then gets a
      fresh key derived from ``seed``); it is traced inside ``jax.jit``
      (close over parameters).
    x: float32 ``[N, H, W, C]`` in [0, 1] (or uint8 0..255).
    y: int ``[N]`` labels.
    settings: from :meth:`AutoAttackSettings.for_version`.
    batch_size: attack batch (sharded over ``mesh``'s ``data`` axis); a
      shorter chunk of still-robust points is padded only to
      :func:`padded_size` rows.
    mesh: a ``('data',)`` mesh; None = a single device. The mesh may span
      several processes (``jax.distributed``): every process then passes the
      same ``x`` and ``y`` and runs this function; each device attacks its
      rows of every batch and the results are gathered, so every process
      returns the same result as one process with the same mesh size.
      Only process 0 writes ``state_dir``.
    seed: base seed; attack ``a``'s pass ``p`` on chunk ``c`` uses
      ``fold_in(fold_in(fold_in(key(seed), a), p), c)``.
    state_dir: when given, the state (robust flags, adversarial examples,
      finished passes) is saved there after every pass and an interrupted
      evaluation resumes from it.
    progress: show a progress bar.
    should_stop: polled after every batch when ``state_dir`` is given; a
      non-empty return (the signal's name, e.g. from
      :class:`jaxrobust.train.preemption.PreemptionGuard`) saves the state,
      including the position inside the current pass, and raises
      :class:`jaxrobust.errors.AutoAttackPreempted`. Resuming from that state
      gives the same result as an uninterrupted run.
    compact: inside an attack pass, drop the points already misclassified
      from the attacked batch at the attack's segment ends (APGD-CE, APGD-DLR,
      each APGD-T target: its step-size checkpoints; Square: every
      ``SQUARE_SEGMENT_QUERIES`` = 250 queries) instead of attacking them to
      the last iteration (the reference's way); a deterministic model only (a
      stochastic one is never compacted). The flags and adversarial examples
      are identical: every per-point quantity of these attacks depends on that
      point only (Square draws from a per-point stream), and a misclassified
      point's result is final (APGD keeps its first misclassifying iterate,
      Square never updates a fooled point). FAB and FAB-T are not cut inside a
      run (FAB minimises the norm: a fooled point's iterate keeps improving to
      the run's end); each of their (target, restart) runs is a pass, so the
      fooled points leave the batch between runs whatever ``compact`` is.

  Returns:
    An :class:`AutoAttackResult`.

  Raises:
    ConfigError: batch size not divisible by the mesh size.
    AutoAttackPreempted: ``should_stop`` asked to stop (the state is saved).
    CheckpointError: a state written for other settings or data.
  """
  x = np.asarray(x)
  if x.dtype == np.uint8:
    x = x.astype(np.float32) / 255.0
  x = x.astype(np.float32)
  y = np.asarray(y).astype(np.int32)
  n = len(x)
  if mesh is not None:
    check_batch_size(batch_size, mesh, "AutoAttack batch size")
    rep, dat = replicated(mesh), data_sharding(mesh)
    jit = lambda f: jax.jit(f, in_shardings=(dat, dat, rep, rep), out_shardings=dat)
    put = lambda a: shard_rows(a, mesh)
  else:
    jit = jax.jit
    put = lambda a: a
  writer = jax.process_index() == 0

  predict_fn = jax.jit(lambda xb, k: jnp.argmax(call_logits(logits_fn, xb, k), -1),
                       **({} if mesh is None else dict(in_shardings=(dat, rep),
                                                       out_shardings=dat)))
  predict = lambda xb, k: host_array(predict_fn(put(xb), k))
  key = jax.random.PRNGKey(seed)
  # Model keys of the cascade's own forward passes (clean and post-attack predictions,
  # checks); the attacks derive theirs from their own keys.
  pred_key = jax.random.fold_in(key, 0x70726564)

  n_dev = 1 if mesh is None else mesh.devices.size

  def batches(idx):
    # A short (last or only) chunk is padded to `padded_size` rows, not to the full
    # batch: later attacks see only the still-robust points, often far fewer than a batch,
    # and padding rows cost as much as real ones.
    for lo in range(0, len(idx), batch_size):
      chunk = idx[lo:lo + batch_size]
      size = padded_size(len(chunk), batch_size, n_dev)
      pad = np.concatenate([chunk, np.full(size - len(chunk), chunk[0])])
      yield lo // batch_size, chunk, pad

  def predict_all(xs):
    out = np.empty(len(xs), np.int32)
    for c, chunk, pad in batches(np.arange(len(xs))):
      out[chunk] = np.asarray(predict(xs[pad], model_key(pred_key, 0, c)))[: len(chunk)]
    return out

  fingerprint = {"eps": settings.eps, "norm": settings.norm, "attacks": list(settings.attacks),
                 "n": n, "seed": seed, "labels_sum": int(y.sum()),
                 "x_sum": round(float(x.sum()), 3),
                 # Every other setting (version, restarts, targets, queries, Square's
                 # schedule, EOT): a state is resumed only under the settings it was made with.
                 "settings": {k: (list(v) if isinstance(v, tuple) else v)
                              for k, v in dataclasses.asdict(settings).items()
                              if k not in ("eps", "norm", "attacks")}}
  restored = _load_state(state_dir, fingerprint) if state_dir else None
  first = x[:min(batch_size, n)]
  n_classes = int(jax.eval_shape(lambda z: call_logits(logits_fn, z, model_key(pred_key, 1)),
                                 jax.ShapeDtypeStruct(first[:2].shape, jnp.float32)).shape[-1])
  msgs = sanity_checks(logits_fn, jnp.asarray(first), jnp.asarray(y[:len(first)]), settings,
                       n_classes, key=jax.random.fold_in(pred_key, 2))
  if restored is None:
    robust = predict_all(x) == y
    x_adv = x.copy()
    meta = dict(fingerprint, done=[], clean_accuracy=float(robust.mean()),
                robust_accuracy={"clean": float(robust.mean())}, seconds={})
  else:
    meta, robust, x_adv = restored
  for a_i, name in enumerate(settings.attacks):
    fn = _attack_fn(name, settings)
    run = jit(lambda xb, yb, k, sub, fn=fn: fn(logits_fn, k, xb, yb, sub))
    segs = _segmented(name, settings) if compact and not is_stochastic(logits_fn) else None
    if segs is not None:
      seg_init = jit(lambda xb, yb, k, sub, g=segs: g.init(logits_fn, k, xb, yb, sub))
      step_fn = lambda xb, yb, k, sub, st, j, g=segs: g.step(logits_fn, k, xb, yb, sub, st, j)
      seg_step = (jax.jit(step_fn) if mesh is None else
                  jax.jit(step_fn, in_shardings=(dat, dat, rep, rep, dat, rep),
                          out_shardings=dat))
    t0 = time.time()
    n_sub = _sub_runs(name, settings)
    for sub in range(n_sub):
      tag = f"{name}:{sub}"
      if tag in meta["done"]:
        continue
      partial = meta.get("partial")
      if partial and partial["tag"] == tag:  # resumed inside this pass: its points, its chunks.
        idx, start = np.asarray(partial["idx"], np.int64), int(partial["next_chunk"])
      else:
        idx, start = np.flatnonzero(robust), 0
      it = batches(idx)
      if progress and len(idx):
        it = tqdm.tqdm(it, total=-(-len(idx) // batch_size), leave=False,
                       desc=f"{name} {sub + 1}/{n_sub}", initial=start)
      for c, chunk, pad in it:
        if c < start:
          continue
        k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, a_i), sub), c)
        if segs is None:
          adv = host_array(run(put(x[pad]), put(y[pad]), k, jnp.int32(sub)))[: len(chunk)]
        else:
          adv = _run_compacted(segs, seg_init, seg_step, x[pad], y[pad], k, jnp.int32(sub),
                               len(chunk), batch_size, n_dev, put)
        pred = predict(np.concatenate([adv, x[pad][len(chunk):]]),
                       model_key(pred_key, 3, a_i, sub, c))[: len(chunk)]
        broken = pred != y[chunk]
        robust[chunk[broken]] = False
        x_adv[chunk[broken]] = adv[broken]
        last = c == (len(idx) - 1) // batch_size
        if state_dir and should_stop is not None and not last and (sig := should_stop()):
          meta["partial"] = {"tag": tag, "idx": idx.tolist(), "next_chunk": c + 1}
          meta["seconds"][name] = meta["seconds"].get(name, 0.0) + time.time() - t0
          if writer:
            _save_state(state_dir, meta, robust, x_adv)
          done = min(len(idx), (c + 1) * batch_size)
          raise AutoAttackPreempted(f"{name} pass {sub + 1}/{n_sub}, {done} of {len(idx)} "
                                    f"points", state_dir, sig)
      meta.pop("partial", None)
      meta["done"].append(tag)
      meta["seconds"][name] = meta["seconds"].get(name, 0.0) + time.time() - t0
      t0 = time.time()
      meta["robust_accuracy"][name] = float(robust.mean())
      if state_dir:
        if writer:
          _save_state(state_dir, meta, robust, x_adv)
        finished = a_i == len(settings.attacks) - 1 and sub == n_sub - 1
        if should_stop is not None and not finished and (sig := should_stop()):
          raise AutoAttackPreempted(f"{name} pass {sub + 1}/{n_sub} done", state_dir, sig)
  ra = meta["robust_accuracy"]
  if "square" in ra and len(ra) > 2:
    others = min(v for k, v in ra.items() if k != "square")
    if ra["square"] < others - 0.002:
      m = (f"Square decreased the robust accuracy by {others - ra['square']:.2%} after the "
           f"gradient attacks: possible gradient masking; the AutoAttack evaluation may be "
           f"unreliable")
      warnings.warn(f"AutoAttack check: {m}", stacklevel=2)
      msgs.append(m)
  return AutoAttackResult(meta["clean_accuracy"], dict(ra), robust, x_adv,
                          {k: round(v, 2) for k, v in meta["seconds"].items()}, msgs)
