"""The AutoAttack cascade: bookkeeping, eps monotonicity, resume, sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust import parallel
from jaxrobust.errors import CheckpointError, ConfigError
from jaxrobust.evaluate import autoattack as aa
from jaxrobust.evaluate.autoattack import AutoAttackSettings, run_autoattack


def step_sizes(monkeypatch):
  """Rows of every compacted segment step the cascade runs (a spy on ``_run_compacted``)."""
  sizes = []
  real = aa._run_compacted

  def spy(segs, init, step, xb, *args):
    def counting_step(xs, *a):
      sizes.append(len(xs))
      return step(xs, *a)
    return real(segs, init, counting_step, xb, *args)

  monkeypatch.setattr(aa, "_run_compacted", spy)
  return sizes


def _fake_attacks(shifts):
  """Registers attack i, adding shifts[i] to every pixel (clipped): a recognisable signature.

  Returns the names and a function that unregisters them.
  """
  from jaxrobust.attacks import AttackSpec, AutoAttackHook, register_attack, unregister_attack
  names = tuple(f"fake{i}" for i in range(len(shifts)))
  for name, shift in zip(names, shifts):
    register_attack(AttackSpec(
        name, lambda logits_fn, key, x, y, eps, norm, shift=shift: jnp.clip(x + shift, 0, 1),
        settings=("eps", "norm"), autoattack=AutoAttackHook()))

  def cleanup():
    for name in names:
      unregister_attack(name)
  return names, cleanup


def test_cascade_attacks_only_still_robust_points():
  # 1-D "images": the model predicts class 1 iff mean pixel > 0.5.
  logits_fn = lambda x: jnp.stack([0.5 - x.mean((1, 2, 3)), x.mean((1, 2, 3)) - 0.5], -1)
  x = np.array([0.1, 0.45, 0.35, 0.2, 0.9, 0.3], np.float32)[:, None, None, None] * np.ones(
      (1, 2, 2, 1), np.float32)
  y = np.array([0, 0, 0, 0, 0, 1])
  # clean: point 4 misclassified (0.9 -> class 1), point 5 misclassified (0.3 -> class 0).
  names, cleanup = _fake_attacks([0.1, 0.25])
  try:
    s = AutoAttackSettings.for_version(0.3, "linf", "custom", attacks=names)
    res = run_autoattack(logits_fn, x, y, s, batch_size=4, progress=False)
  finally:
    cleanup()
  assert res.clean_accuracy == pytest.approx(4 / 6)
  # fake0 (+0.1) breaks point 1 (0.45 -> 0.55); fake1 (+0.25) then breaks 2 (0.35 -> 0.6).
  assert res.robust_accuracy == pytest.approx({"clean": 4 / 6, "fake0": 3 / 6, "fake1": 2 / 6})
  assert res.robust.tolist() == [True, False, False, True, False, False]
  np.testing.assert_allclose(res.x_adv[1], x[1] + 0.1, atol=1e-6)  # kept fake0's example
  np.testing.assert_allclose(res.x_adv[2], x[2] + 0.25, atol=1e-6)
  for i in (0, 3, 4, 5):  # robust or initially misclassified: the clean image
    np.testing.assert_array_equal(res.x_adv[i], x[i])


def test_short_chunks_are_padded_to_small_fixed_sizes():
  assert [aa.padded_size(n, 250) for n in (1, 2, 3, 5, 17, 31, 32, 33, 200, 249, 250)] == [
      1, 2, 4, 8, 32, 32, 32, 64, 224, 250, 250]
  assert [aa.padded_size(n, 256, n_dev=8) for n in (1, 9, 33)] == [8, 16, 64]
  for n in range(1, 251):  # never fewer rows than points, never more than the batch
    assert n <= aa.padded_size(n, 250) <= 250
  with pytest.raises(ValueError):
    aa.padded_size(0, 250)


def test_a_lone_robust_point_is_attacked_as_one_row():
  logits_fn = lambda x: jnp.stack([0.5 - x.mean((1, 2, 3)), x.mean((1, 2, 3)) - 0.5], -1)
  x = np.array([0.1, 0.9, 0.8], np.float32)[:, None, None, None] * np.ones((1, 2, 2, 1),
                                                                           np.float32)
  y = np.array([0, 0, 0])  # only point 0 is classified correctly
  rows = []
  from jaxrobust.attacks import AttackSpec, AutoAttackHook, register_attack, unregister_attack

  def spy(logits_fn, key, x, y, eps, norm):
    rows.append(x.shape[0])  # traced once per distinct batch shape
    return x
  register_attack(AttackSpec("spy", spy, settings=("eps", "norm"),
                             autoattack=AutoAttackHook()))
  try:
    s = AutoAttackSettings.for_version(0.3, "linf", "custom", attacks=("spy",))
    res = run_autoattack(logits_fn, x, y, s, batch_size=64, progress=False)
  finally:
    unregister_attack("spy")
  assert rows == [1] and res.robust.tolist() == [True, False, False]


def _trained_linear_mnist(data_dir):
  with np.load(data_dir / "mnist_train.npz") as f:
    xs = f["images"][:2000].astype(np.float32) / 255.0
    ys = f["labels"][:2000].astype(np.int32)
  w = jnp.zeros((784, 10))
  b = jnp.zeros(10)

  def loss(wb):
    logits = xs.reshape(-1, 784) @ wb[0] + wb[1]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), ys[:, None], -1))

  grad = jax.jit(jax.grad(loss))
  wb = (w, b)
  for _ in range(60):
    g = grad(wb)
    wb = (wb[0] - 0.5 * g[0], wb[1] - 0.5 * g[1])
  w, b = wb
  with np.load(data_dir / "mnist_test.npz") as f:
    xt = f["images"][:64].astype(np.float32) / 255.0
    yt = f["labels"][:64].astype(np.int32)
  return (lambda x: x.reshape(x.shape[0], -1) @ w + b), xt, yt


FAST = dict(apgd_steps=10, apgd_t_targets=3)


@pytest.mark.slow
def test_robust_accuracy_is_monotone_in_eps_and_bounded_by_pgd(data_dir):
  from jaxrobust.attacks import pgd
  logits_fn, x, y = _trained_linear_mnist(data_dir)
  clean = float(np.mean(np.argmax(logits_fn(x), -1) == y))
  assert clean > 0.7
  accs = []
  for eps in (0.02, 0.05, 0.1, 1.0):
    s = AutoAttackSettings.for_version(eps, "linf", "custom", attacks=("apgd-ce", "apgd-t"),
                                       **FAST)
    res = run_autoattack(logits_fn, x, y, s, batch_size=32, progress=False)
    accs.append(float(res.robust.mean()))
    x_pgd = pgd(logits_fn, jax.random.PRNGKey(0), jnp.asarray(x), jnp.asarray(y), eps=eps,
                step_size=eps / 4, num_steps=10)
    pgd_acc = float(np.mean(np.argmax(logits_fn(x_pgd), -1) == y))
    assert accs[-1] <= pgd_acc + 1e-9 <= clean + 1e-9
  assert all(a >= b for a, b in zip(accs, accs[1:]))
  assert accs[-1] == 0.0


@pytest.mark.slow
def test_a_signal_mid_pass_saves_and_the_resumed_run_equals_an_uninterrupted_one(
    tmp_path, data_dir):
  from jaxrobust.errors import AutoAttackPreempted
  logits_fn, x, y = _trained_linear_mnist(data_dir)
  s = AutoAttackSettings.for_version(0.1, "linf", "custom", attacks=("apgd-ce", "apgd-t"),
                                     **FAST)
  full = run_autoattack(logits_fn, x, y, s, batch_size=16, progress=False)
  for stop_at in (1, 2, 5):  # inside APGD-CE's pass, at its end, inside an APGD-T pass
    calls = []

    def should_stop(stop_at=stop_at, calls=calls):
      calls.append(1)
      return "SIGTERM" if len(calls) == stop_at else None
    state = tmp_path / f"state{stop_at}"
    with pytest.raises(AutoAttackPreempted, match=r"preempted \(SIGTERM\): saved the "
                       r"AutoAttack state \((apgd_ce|apgd_t) pass .*\) in .*exit status 75"):
      run_autoattack(logits_fn, x, y, s, batch_size=16, progress=False, state_dir=str(state),
                     should_stop=should_stop)
    resumed = run_autoattack(logits_fn, x, y, s, batch_size=16, progress=False,
                             state_dir=str(state), should_stop=lambda: None)
    np.testing.assert_array_equal(resumed.robust, full.robust)
    np.testing.assert_array_equal(resumed.x_adv, full.x_adv)
    assert resumed.robust_accuracy == full.robust_accuracy


@pytest.mark.slow
def test_resume_from_state_equals_uninterrupted(tmp_path, data_dir, monkeypatch):
  logits_fn, x, y = _trained_linear_mnist(data_dir)
  s = AutoAttackSettings.for_version(0.1, "linf", "custom", attacks=("apgd-ce", "apgd-t"),
                                     **FAST)
  # compact=False: the crash is injected into the whole-pass attack function.
  full = run_autoattack(logits_fn, x, y, s, batch_size=32, progress=False, compact=False)

  real = aa._attack_fn

  def crash_on_second_target(name, st):
    fn = real(name, st)
    if name != "apgd_t":
      return fn

    def wrapped(logits_fn_, key, xb, yb, sub):
      out = fn(logits_fn_, key, xb, yb, sub)
      jax.debug.callback(lambda s_: (_ for _ in ()).throw(KeyboardInterrupt())
                         if int(s_) == 1 else None, sub)
      return out
    return wrapped

  monkeypatch.setattr(aa, "_attack_fn", crash_on_second_target)
  with pytest.raises(Exception):
    run_autoattack(logits_fn, x, y, s, batch_size=32, progress=False, state_dir=str(tmp_path),
                   compact=False)
  monkeypatch.setattr(aa, "_attack_fn", real)
  import json
  done = json.loads((tmp_path / "aa_state.json").read_text())["done"]
  assert done == ["apgd_ce:0", "apgd_t:0"]
  resumed = run_autoattack(logits_fn, x, y, s, batch_size=32, progress=False,
                           state_dir=str(tmp_path), compact=False)
  np.testing.assert_array_equal(resumed.robust, full.robust)
  np.testing.assert_allclose(resumed.x_adv, full.x_adv, atol=1e-6)
  other = AutoAttackSettings.for_version(0.2, "linf", "custom", attacks=("apgd-ce", "apgd-t"))
  with pytest.raises(CheckpointError, match="eps"):
    run_autoattack(logits_fn, x, y, other, batch_size=32, progress=False,
                   state_dir=str(tmp_path))


def test_compaction_gives_identical_flags_and_examples(data_dir, monkeypatch):
  # Compaction drops fooled points from an APGD pass at its checkpoints; the result must be
  # bit-identical to attacking the whole chunk to the last iteration. eps 0.05 on the linear
  # model: points fall at many different iterations and some survive both attacks.
  logits_fn, x, y = _trained_linear_mnist(data_dir)
  s = AutoAttackSettings.for_version(0.05, "linf", "custom", attacks=("apgd-ce", "apgd-t"),
                                     apgd_steps=10, apgd_t_targets=1)
  sizes = step_sizes(monkeypatch)
  full = run_autoattack(logits_fn, x, y, s, batch_size=32, progress=False, compact=False)
  assert not sizes
  compacted = run_autoattack(logits_fn, x, y, s, batch_size=32, progress=False)
  assert 0 < full.robust.sum() < (np.argmax(logits_fn(x), -1) == y).sum()
  np.testing.assert_array_equal(compacted.robust, full.robust)
  np.testing.assert_array_equal(compacted.x_adv, full.x_adv)
  assert compacted.robust_accuracy == full.robust_accuracy
  assert min(sizes) < 32                 # fooled points did leave the batch
  assert set(sizes) <= {1, 2, 4, 8, 16, 32}


@pytest.mark.slow
def test_sharded_over_eight_devices_equals_one(data_dir):
  logits_fn, x, y = _trained_linear_mnist(data_dir)
  s = AutoAttackSettings.for_version(0.1, "linf", "custom", attacks=("apgd-ce", "apgd-t"),
                                     **FAST)
  one = run_autoattack(logits_fn, x, y, s, batch_size=32, progress=False)
  eight = run_autoattack(logits_fn, x, y, s, batch_size=32, progress=False,
                         mesh=parallel.make_mesh(8))
  np.testing.assert_array_equal(one.robust, eight.robust)
  np.testing.assert_allclose(one.x_adv, eight.x_adv, atol=1e-5)


def test_settings_and_checks():
  s = AutoAttackSettings.for_version(8 / 255)
  assert s.attacks == ("apgd_ce", "apgd_t", "fab_t", "square")
  assert (s.apgd_restarts, s.apgd_t_targets, s.fab_t_targets, s.square_queries) == (1, 9, 9, 5000)
  plus = AutoAttackSettings.for_version(8 / 255, version="plus")
  assert plus.attacks == ("apgd_ce", "apgd_dlr", "fab", "square", "apgd_t", "fab_t")
  # Reference set_version('plus'): APGD-CE, APGD-DLR and untargeted FAB x5; Square
  # keeps n_restarts=1 and the fab-t branch sets fab.n_restarts = 1.
  restarts = {name: aa.attack_settings(name, plus).get("num_restarts") for name in plus.attacks}
  assert restarts == {"apgd_ce": 5, "apgd_dlr": 5, "fab": 5, "square": 1, "apgd_t": None,
                      "fab_t": 1}
  assert aa.attack_settings("apgd_t", plus)["n_target_classes"] == 9
  assert aa.attack_settings("fab_t", plus)["n_target_classes"] == 9
  # Passes of the cascade: APGD's, FAB's and Square's restarts, APGD-T's and FAB-T's targets
  # (times their restarts).
  assert [aa._sub_runs(name, plus) for name in plus.attacks] == [5, 5, 5, 1, 9, 9]
  assert [aa._sub_runs(name, s) for name in s.attacks] == [1, 9, 9, 1]
  two = AutoAttackSettings.for_version(8 / 255, version="custom", attacks=("fab_t", "square"),
                                       fab_t_targets=3, fab_t_restarts=2, square_restarts=4)
  assert [aa._sub_runs(name, two) for name in two.attacks] == [6, 4]
  # Square inside AutoAttack: the unrescaled p schedule (resc_schedule=False), every version.
  for version in ("standard", "plus"):
    cfg = aa.attack_settings("square", AutoAttackSettings.for_version(8 / 255, version=version))
    assert cfg["rescale_schedule"] is False and cfg["n_queries"] == 5000
    assert cfg["num_restarts"] == 1
  assert aa.attack_settings("fab_t", s)["num_restarts"] == 1
  p = AutoAttackSettings.for_version(8 / 255, version="custom",
                                     attacks=("apgd-ce", "apgd-dlr", "square"), apgd_restarts=5)
  assert p.attacks[:2] == ("apgd_ce", "apgd_dlr") and p.apgd_restarts == 5
  assert AutoAttackSettings.for_version(8 / 255, version="rand").eot_iter == 20
  with pytest.raises(ConfigError, match="unknown AutoAttack version"):
    AutoAttackSettings.for_version(8 / 255, version="fast")
  with pytest.raises(ConfigError, match="version='custom'"):
    AutoAttackSettings.for_version(8 / 255, attacks=("apgd-ce",))
  with pytest.raises(ConfigError, match="unknown AutoAttack attack"):
    AutoAttackSettings.for_version(8 / 255, version="custom", attacks=("pgd",))
  # Softmax outputs and too few classes are flagged.
  x = jnp.ones((4, 2, 2, 1)) * 0.5
  y = jnp.zeros(4, jnp.int32)
  with pytest.warns(UserWarning, match="probability distribution"):
    msgs = aa.sanity_checks(lambda z: jax.nn.softmax(jnp.ones((z.shape[0], 3))), x, y, s, 3)
  assert any("DLR" in m for m in msgs) and any("APGD-T uses 9" in m for m in msgs)
  # A batch-dependent (train-mode BN-like) model is flagged.
  with pytest.warns(UserWarning, match="depends on the rest of the batch"):
    aa.sanity_checks(lambda z: jnp.stack([z.mean((1, 2, 3)) - z.mean()] * 10, -1) *
                     jnp.arange(10.0), x.at[0].set(0.1), y, s, 10)
