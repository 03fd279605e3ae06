"""RiFT's module criticality, modules, interpolation and re-initialisation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrobust.errors import ConfigError
from jaxrobust.methods import ModelFns
from jaxrobust.rift import (MRCSettings, interpolate, list_modules, make_group_maximizer,
                            module_regex, mrc_sweep, reinit_analysis, replace_module,
                            select_alpha)
from jaxrobust.train import split_model
from jaxrobust.utils.paths import named_leaves, param_name, select_leaves
from tests.numpy_models import numpy_initialised


class TwoHeads(nnx.Module):
  """A linear classifier plus a same-shaped layer whose output is never used."""

  def __init__(self, seed=0):
    rngs = nnx.Rngs(seed)
    self.used = nnx.Linear(12, 3, rngs=rngs)
    self.unused = nnx.Linear(12, 3, rngs=rngs)

  def __call__(self, x, train=False, key=None):
    del train, key
    return self.used(x.reshape(x.shape[0], -1))


def _two_heads():
  graphdef, params, batch_stats = split_model(TwoHeads())
  return ModelFns(graphdef), params, batch_stats


def _data(n=37, seed=0):
  gen = np.random.default_rng(seed)
  x = gen.uniform(size=(n, 2, 2, 3)).astype(np.float32)
  y = gen.integers(0, 3, size=n).astype(np.int32)
  return x, y


def test_list_modules_names_filters_and_errors():
  _, params, _ = numpy_initialised("simple_cnn_tiny")
  mods = list_modules(params)
  assert [m.name for m in mods] == ["convs.0", "convs.1", "linear"]
  assert mods[0].shape == (3, 3, 3, 8) and mods[2].shape == (16, 10)
  assert [m.name for m in list_modules(params, include=r"^convs")] == ["convs.0", "convs.1"]
  assert [m.name for m in list_modules(params, exclude=r"\.1$")] == ["convs.0", "linear"]
  with pytest.raises(ConfigError, match="no conv/dense module"):
    list_modules(params, include="nothing_here")
  with pytest.raises(ConfigError, match="not a valid regular expression"):
    list_modules(params, include="(")


def test_unused_module_has_zero_mrc_and_used_one_positive():
  model, params, bs = _two_heads()
  x, y = _data()
  mods = list_modules(params)
  assert [m.name for m in mods] == ["unused", "used"]  # one shape group of two.
  res = {r.name: r for r in mrc_sweep(model, params, bs, x, y, mods,
                                      MRCSettings(batch_size=8, num_epochs=3), progress=False)}
  assert res["unused"].mrc == 0.0 and res["unused"].rel_norm == 0.0
  assert res["used"].mrc > 1e-3
  assert res["used"].max_loss == pytest.approx(res["used"].base_loss + res["used"].mrc)


def test_xi_zero_gives_zero_and_the_bound_holds():
  model, params, bs = numpy_initialised("simple_cnn_tiny")
  gen = np.random.default_rng(1)
  x = gen.uniform(size=(24, 32, 32, 3)).astype(np.float32)
  y = gen.integers(0, 10, size=24).astype(np.int32)
  mods = list_modules(params)
  zero = mrc_sweep(model, params, bs, x, y, mods, MRCSettings(xi=0.0, batch_size=16,
                                                               num_epochs=2), progress=False)
  assert [r.mrc for r in zero] == [0.0] * len(mods)
  for project in ("epoch", "step"):
    res = mrc_sweep(model, params, bs, x, y, mods,
                    MRCSettings(xi=0.05, batch_size=16, num_epochs=2, project=project),
                    progress=False)
    for r in res:
      assert r.rel_norm <= 0.05 * (1 + 1e-5)
      assert r.rel_norm > 0.049  # lr 1 leaves the ball at once: rescaled onto its surface.
      assert r.mrc > 0


def _reference_mrc(model, params, bs, x, y, name, s: MRCSettings):
  """The official procedure as a plain Python loop (no shuffling), for comparison."""
  flat = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  path = [p for p in flat if param_name(p) == name + ".kernel"][0]
  w0 = flat[path]

  def with_w(w):
    return jax.tree_util.tree_map_with_path(lambda p, v: w if p == path else v, params)

  def mean_ce(w, xb, yb):
    logits = model.apply(with_w(w), bs, jnp.asarray(xb), train=False)[0]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], -1))

  def full_loss(w):
    return float(mean_ce(w, x, y))

  base = full_loss(w0)
  w, best = w0, 0.0
  for _ in range(s.num_epochs):
    for lo in range(0, len(y), s.batch_size):
      w = w + s.step_size * jax.grad(mean_ce)(w, x[lo:lo + s.batch_size],
                                              y[lo:lo + s.batch_size])
    d = w - w0
    times = float(jnp.linalg.norm(d) / jnp.linalg.norm(w0))
    if times > s.xi:
      w = w0 + d / times * s.xi
    best = max(best, full_loss(w))
  return best - base


def test_agrees_with_a_plain_loop_of_the_official_procedure():
  model, params, bs = _two_heads()
  x, y = _data(n=37)  # 37 = 4 batches of 10, the last one of 7.
  s = MRCSettings(xi=0.3, num_epochs=3, step_size=0.5, batch_size=10, shuffle=False)
  res = mrc_sweep(model, params, bs, x, y, list_modules(params, include="^used"), s,
                  progress=False)
  assert res[0].mrc == pytest.approx(_reference_mrc(model, params, bs, x, y, "used", s),
                                     rel=1e-4, abs=1e-6)


def test_an_interrupted_sweep_resumes_to_the_uninterrupted_results():
  model, params, bs = _two_heads()
  x, y = _data(n=20)
  s = MRCSettings(xi=0.3, num_epochs=2, step_size=0.5, batch_size=10)
  mods = list_modules(params)  # 'unused' and 'used' (4 leaves, 2 modules of one shape)
  key = jax.random.PRNGKey(7)
  full = mrc_sweep(model, params, bs, x, y, mods, s, key, progress=False)
  saved = {}

  class Stop(Exception):
    pass

  def stop_after_first(j, results):
    saved.update(results)
    raise Stop
  with pytest.raises(Stop):
    mrc_sweep(model, params, bs, x, y, mods, s, key, progress=False, on_module=stop_after_first)
  assert list(saved) == [mods[0].name]
  # Through the saved JSON form, as the pipeline stores it.
  done = {n: type(r).from_dict(r.to_dict()) for n, r in saved.items()}
  seen = []
  resumed = mrc_sweep(model, params, bs, x, y, mods, s, key, progress=False, done=done,
                      on_module=lambda j, results: seen.append(j))
  assert seen == [1]  # only the second module was computed
  assert [r.mrc for r in resumed] == [r.mrc for r in full]
  assert [r.robust_acc for r in resumed] == [r.robust_acc for r in full]


def test_one_compilation_per_kernel_shape():
  model, params, bs = _two_heads()
  x, y = _data()
  mods = list_modules(params)
  fn = make_group_maximizer(model, params, mods, len(y), MRCSettings(batch_size=8, num_epochs=1))
  a = fn(params, bs, 0, jnp.asarray(x), jnp.asarray(y), jax.random.PRNGKey(0))
  b = fn(params, bs, 1, jnp.asarray(x), jnp.asarray(y), jax.random.PRNGKey(0))
  assert [f._cache_size() for f in fn.jitted] == [1, 1]  # pylint: disable=protected-access
  assert float(a["max_loss"]) == pytest.approx(float(a["base_loss"]))  # 'unused'.
  assert float(b["max_loss"]) > float(b["base_loss"])  # 'used'.
  with pytest.raises(ValueError, match="share a kernel shape"):
    _, p2, _ = numpy_initialised("simple_cnn_tiny")
    make_group_maximizer(model, p2, list_modules(p2), 4, MRCSettings())


def test_interpolation_endpoints_are_exact_and_midpoint_is_the_mean():
  _, a, _ = numpy_initialised("simple_cnn_tiny", seed=0)
  _, b, _ = numpy_initialised("simple_cnn_tiny", seed=1)
  for alpha, want in ((0.0, a), (1.0, b)):
    got = interpolate(a, b, alpha)
    for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
  mid = interpolate(a, b, 0.5)
  for u, v, w in zip(jax.tree.leaves(mid), jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u), (np.asarray(v) + np.asarray(w)) / 2, rtol=1e-6)
  _, c, _ = numpy_initialised("small_cnn_tiny")
  with pytest.raises(ConfigError):
    interpolate(a, c, 0.5)


def test_select_alpha_maximises_clean_within_the_robust_tolerance():
  records = [dict(alpha=0.0, clean=0.50, robust=0.30), dict(alpha=0.5, clean=0.56, robust=0.295),
             dict(alpha=0.7, clean=0.58, robust=0.28), dict(alpha=1.0, clean=0.60, robust=0.10)]
  assert select_alpha(records, 0.01)["alpha"] == 0.5
  assert select_alpha(records, 0.05)["alpha"] == 0.7
  assert select_alpha(records, 0.0)["alpha"] == 0.0
  assert select_alpha(records, 1.0)["alpha"] == 1.0
  tie = [dict(alpha=0.0, clean=0.5, robust=0.3), dict(alpha=0.3, clean=0.5, robust=0.3)]
  assert select_alpha(tie, 0.01)["alpha"] == 0.0
  with pytest.raises(ConfigError, match="alpha = 0"):
    select_alpha(records[1:], 0.01)


def test_replace_module_and_reinit_analysis():
  _, trained, _ = numpy_initialised("simple_cnn_tiny", seed=0)
  _, init, _ = numpy_initialised("simple_cnn_tiny", seed=1)
  _, rand, _ = numpy_initialised("simple_cnn_tiny", seed=2)
  mods = list_modules(trained)
  out = replace_module(trained, init, "linear")
  names = [n for n, _ in named_leaves(out)]
  for n, u, t, i in zip(names, jax.tree.leaves(out), jax.tree.leaves(trained),
                        jax.tree.leaves(init)):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(i if n.startswith("linear.")
                                                            else t))
  seen = []

  def evaluate(p):
    # Identify which module differs from `trained` and from which source it came.
    for m in mods:
      k = jax.tree.leaves(p)[m.leaf_index]
      for label, src in (("reinit", init), ("rerandom", rand)):
        if np.array_equal(np.asarray(k), np.asarray(jax.tree.leaves(src)[m.leaf_index])):
          seen.append((m.name, label))
    return {"clean": 0.5, "robust": 0.25}

  rows = reinit_analysis(trained, mods, init, rand, evaluate)
  assert len(rows) == 2 * len(mods) and rows[0] == {"module": "convs.0", "mode": "reinit",
                                                    "clean": 0.5, "robust": 0.25}
  assert seen == [(m.name, mode) for m in mods for mode in ("reinit", "rerandom")]
  with pytest.raises(ValueError, match="unknown re-initialisation"):
    reinit_analysis(trained, mods, init, rand, evaluate, modes=("zero",))


def test_module_regex_selects_exactly_the_module():
  _, params, _ = numpy_initialised("simple_cnn_tiny")
  mask = select_leaves(params, module_regex(["convs.1"]))
  chosen = [n for (n, _), m in zip(named_leaves(params), jax.tree.leaves(mask)) if m]
  assert chosen == ["convs.1.kernel"]
  with pytest.raises(ConfigError, match="matches no parameter"):
    select_leaves(params, module_regex(["convs.7"]))


@pytest.mark.parametrize("arg", [None, "local", "smoke"])
def test_rift_config_variants_validate(arg):
  from jaxrobust.rift import validate_rift_config
  from tests.train.helpers import load_config
  c = load_config("cifar10_rift", arg)
  with pytest.raises(ConfigError, match="at_workdir"):
    validate_rift_config(c)
  c.at_workdir = "runs/x"
  validate_rift_config(c)
  c.mrc.split = "train"
  with pytest.raises(ConfigError, match="mrc.split"):
    validate_rift_config(c)
