"""timm state dict -> jaxrobust ViT / DeiT / Swin: golden fixtures, resizing, errors.

The fixtures (``tests/fixtures/timm_*.npz``, written by ``make_timm_fixtures.py`` with
timm and torch, versions in their ``__meta__``) hold a random-init timm model's state dict,
an input and timm's float64 logits; here the converted jaxrobust model (float32) must
reproduce them to 1e-5 without torch. With torch and timm importable, the same is checked
live on a fresh model, and the resizing helpers against torch itself.
"""
import json
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrobust.errors import CheckpointError
from jaxrobust.models import create_model
from jaxrobust.models.convert_timm import (_flat_params, convert_timm_state_dict,
                                           interpolate_bilinear, load_timm_into,
                                           patch_kernel_block_sum, resize_pos_embed,
                                           to_timm_state_dict)

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
NAMES = ("deit_tiny", "vit_2block", "swin_tiny")


def _fixture(name):
  with np.load(FIXTURES / f"timm_{name}.npz") as f:
    data = {k: f[k] for k in f.files}
  meta = json.loads(str(data.pop("__meta__")))
  x, logits = data.pop("__x__"), data.pop("__logits__")
  return data, x, logits, meta


def _model(meta, **over):
  kw = dict(meta["jaxrobust_model"])
  name = kw.pop("name")
  for key in ("depths", "num_heads"):
    if isinstance(kw.get(key), list):
      kw[key] = tuple(kw[key])
  kw.update(over)
  return create_model(name, num_classes=10, normalize="none", **kw)


@pytest.mark.parametrize("name", NAMES)
def test_converted_fixture_reproduces_timm_logits(name):
  sd, x, want, meta = _fixture(name)
  assert meta["timm"] and meta["torch"]  # the generating versions are recorded.
  model = _model(meta)
  report = load_timm_into(model, sd)
  assert report == {"kept": [], "resized": []}
  got = np.asarray(model(x))
  # float32 forward against timm's float64: differences are float32 rounding (~1e-6).
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_load_from_npz_path_and_a_clear_error_when_missing(tmp_path):
  sd, x, want, meta = _fixture("vit_2block")
  path = tmp_path / "vit.npz"
  np.savez(path, **sd)
  model = _model(meta)
  load_timm_into(model, str(path))
  np.testing.assert_allclose(np.asarray(model(x)), want, rtol=0, atol=1e-5)
  with pytest.raises(CheckpointError, match="is not a file.*scratch=True"):
    load_timm_into(model, str(tmp_path / "absent.npz"))
  (tmp_path / "bad.npz").write_text("not a zip")
  with pytest.raises(CheckpointError, match="is not an .npz of arrays"):
    load_timm_into(model, str(tmp_path / "bad.npz"))


def test_mismatching_state_dicts_are_checkpoint_errors():
  sd, _, _, meta = _fixture("deit_tiny")
  with pytest.raises(CheckpointError, match="no place in this ViT"):
    convert_timm_state_dict(sd, _model(meta, depth=1))  # blocks.1 has nowhere to go.
  with pytest.raises(CheckpointError, match="are not in the state dict"):
    convert_timm_state_dict({k: v for k, v in sd.items() if k != "norm.bias"}, _model(meta))
  with pytest.raises(CheckpointError, match="no place"):
    convert_timm_state_dict({**sd, "dist_token": np.zeros((1, 1, 48))}, _model(meta))
  with pytest.raises(CheckpointError, match="mlp|Dense_0|shape"):
    convert_timm_state_dict(sd, _model(meta, mlp_ratio=2.0))
  swin_sd, _, _, swin_meta = _fixture("swin_tiny")
  with pytest.raises(CheckpointError, match="relative_position_bias_table has shape"):
    convert_timm_state_dict(swin_sd, _model(swin_meta, image_size=64, window_size=8))


def test_another_class_count_keeps_the_models_head():
  sd, x, _, meta = _fixture("deit_tiny")
  model = create_model("deit_ti", num_classes=7, normalize="none", image_size=32, patch_size=4,
                       depth=2, width=48)
  head = np.asarray(model.head.kernel[...])
  report = load_timm_into(model, sd)
  assert report["kept"] == ["head.bias", "head.kernel"]
  np.testing.assert_array_equal(np.asarray(model.head.kernel[...]), head)
  np.testing.assert_array_equal(np.asarray(model.Transformer.encoder_norm.scale[...]),
                                sd["norm.weight"])


def test_old_swin_layout_is_renamed():
  # Microsoft / timm < 0.9 keys: downsample at the end of stage i, 'head.weight'.
  sd, x, want, meta = _fixture("swin_tiny")
  old = {}
  for k, v in sd.items():
    for i in (1, 2):
      k = k.replace(f"layers.{i}.downsample", f"layers.{i - 1}.downsample")
    old[k.replace("head.fc.", "head.")] = v
  assert "layers.0.downsample.reduction.weight" in old and "head.weight" in old
  model = _model(meta)
  load_timm_into(model, old)
  np.testing.assert_allclose(np.asarray(model(x)), want, rtol=0, atol=1e-5)


# --- back to timm ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_export_reproduces_the_fixtures_state_dict(name):
  sd, x, want, meta = _fixture(name)
  model = _model(meta)
  load_timm_into(model, sd)
  exported = to_timm_state_dict(model)
  assert set(exported) == set(sd)
  for k, v in sd.items():
    assert exported[k].dtype == np.float32 and exported[k].shape == v.shape, k
    np.testing.assert_array_equal(exported[k], v, err_msg=k)


@pytest.mark.parametrize("name,kw", [
    ("vit_s", dict(image_size=32, patch_size=4, width=24, depth=2, num_heads=3)),
    ("vit_s", dict(image_size=32, patch_size=8, width=16, depth=1, num_heads=2, qkv_bias=False)),
])  # Swin: test_export_reproduces_the_fixtures_state_dict.
def test_export_and_reimport_gives_identical_parameters(name, kw):
  model = create_model(name, num_classes=10, normalize="none", seed=1, **kw)
  # Every parameter random (LayerNorms are 1 / 0 at init), so no two of them can be confused.
  rng = np.random.default_rng(0)
  state = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), state))
  other = create_model(name, num_classes=10, normalize="none", seed=2, **kw)
  assert load_timm_into(other, to_timm_state_dict(model)) == {"kept": [], "resized": []}
  after = _flat_params(other)
  for k, v in _flat_params(model).items():
    np.testing.assert_array_equal(np.asarray(after[k]), np.asarray(v), err_msg=k)


def test_export_refuses_other_models():
  cnn = nnx.eval_shape(lambda: create_model("simple_cnn_tiny", num_classes=10))
  with pytest.raises(CheckpointError, match="no timm export for"):
    to_timm_state_dict(cnn)


# --- resizing -------------------------------------------------------------------------------


def test_bilinear_against_hand_computed_values():
  grid = np.array([[0.0, 1.0], [2.0, 3.0]])[..., None]
  # align_corners=False, 2 -> 4: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (-> 1).
  want = np.array([[0.0, 0.25, 0.75, 1.0], [0.5, 0.75, 1.25, 1.5], [1.5, 1.75, 2.25, 2.5],
                   [2.0, 2.25, 2.75, 3.0]])
  np.testing.assert_allclose(interpolate_bilinear(grid, (4, 4))[..., 0], want)
  # 4 -> 2: sources 0.5 and 2.5, the means of neighbours; 3 -> 3 is the identity.
  line = np.arange(4.0).reshape(1, 4, 1)
  np.testing.assert_allclose(interpolate_bilinear(line, (1, 2))[0, :, 0], [0.5, 2.5])
  g = np.random.default_rng(0).normal(size=(3, 3, 2))
  np.testing.assert_allclose(interpolate_bilinear(g, (3, 3)), g)


def test_pos_embed_resize_keeps_the_class_token():
  pos = np.random.default_rng(0).normal(size=(1, 1 + 14 * 14, 5)).astype(np.float32)
  out = resize_pos_embed(pos, (8, 8))
  assert out.shape == (1, 65, 5)
  np.testing.assert_array_equal(out[:, 0], pos[:, 0])
  grid = interpolate_bilinear(pos[0, 1:].reshape(14, 14, 5), (8, 8)).reshape(64, 5)
  np.testing.assert_allclose(out[0, 1:], grid, rtol=1e-6)
  with pytest.raises(CheckpointError, match="not a square grid"):
    resize_pos_embed(pos[:, :-1], (8, 8))


def test_patch_kernel_block_sum_by_hand():
  w = np.random.default_rng(0).normal(size=(2, 3, 16, 16))
  got = patch_kernel_block_sum(w, 4)
  want = np.zeros((2, 3, 4, 4))
  for a in range(4):
    for b in range(4):
      want[:, :, a, b] = w[:, :, 4 * a:4 * a + 4, 4 * b:4 * b + 4].sum(axis=(2, 3))
  np.testing.assert_allclose(got, want, rtol=1e-12)
  assert patch_kernel_block_sum(w, 8).shape == (2, 3, 8, 8)  # 2 x 2 blocks.
  with pytest.raises(CheckpointError, match="not a multiple"):
    patch_kernel_block_sum(w, 5)


def test_pretrained_patch16_weights_are_block_summed_and_resized():
  sd, _, _, meta = _fixture("deit_tiny")
  rng = np.random.default_rng(1)
  big = dict(sd, **{"patch_embed.proj.weight": rng.normal(size=(48, 3, 16, 16)),
                    "pos_embed": rng.normal(size=(1, 1 + 14 * 14, 48))})
  model = _model(meta)
  report = load_timm_into(model, big)
  assert len(report["resized"]) == 2
  kernel = patch_kernel_block_sum(big["patch_embed.proj.weight"], 4).transpose(2, 3, 1, 0)
  np.testing.assert_allclose(np.asarray(model.embedding.kernel[...]), kernel, rtol=1e-6)
  np.testing.assert_allclose(
      np.asarray(model.Transformer.posembed_input.pos_embedding[...]),
      resize_pos_embed(big["pos_embed"], (8, 8)), rtol=1e-6)


# --- live comparison with torch + timm (skipped without them) ---------------------------------


def test_live_against_timm():
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  grid = torch.randn(1, 5, 14, 14, dtype=torch.float64)
  for size in ((8, 8), (20, 20), (7, 9)):
    want = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
    got = interpolate_bilinear(grid[0].permute(1, 2, 0).numpy(), size)
    np.testing.assert_allclose(got, want[0].permute(1, 2, 0).numpy(), rtol=1e-12, atol=1e-12)
  torch.manual_seed(0)
  for ctor, kw, ours in (
      ("deit_tiny_patch16_224", dict(img_size=32, patch_size=4, depth=1, embed_dim=24),
       dict(name="deit_ti", image_size=32, patch_size=4, depth=1, width=24)),
      ("swin_tiny_patch4_window7_224", dict(img_size=32, patch_size=2, window_size=4,
                                            embed_dim=12, depths=(2, 2), num_heads=(2, 2)),
       dict(name="swin_t", image_size=32, patch_size=2, window_size=4, embed_dim=12,
            depths=(2, 2), num_heads=(2, 2)))):
    tm = timm.create_model(ctor, pretrained=False, num_classes=10, **kw).eval().double()
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
      want = tm(torch.from_numpy(x.transpose(0, 3, 1, 2)).double()).numpy()
    name = ours.pop("name")
    model = create_model(name, num_classes=10, normalize="none", **ours)
    load_timm_into(model, {k: v.float().numpy() for k, v in tm.state_dict().items()})
    np.testing.assert_allclose(np.asarray(model(x)), want, rtol=0, atol=1e-5)
