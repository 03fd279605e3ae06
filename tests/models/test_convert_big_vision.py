"""Google augreg / big_vision ``.npz`` -> jaxrobust ViT: golden fixtures, layouts, resizing, errors.

The fixtures (``tests/fixtures/bigvision_vit_2block{,_scanned}.npz``, written by
``make_big_vision_fixture.py`` with timm and torch, versions in their ``__meta__``) hold a
random-init timm ViT in the names of a Google checkpoint (the augreg layout, and big_vision's
scanned one), checked there against timm's own reader of these files; here the converted
jaxrobust model (float32) must reproduce timm's float64 logits to 1e-5 without torch.
"""
import json
import pathlib

import numpy as np
import pytest
from flax import nnx

from jaxrobust.errors import CheckpointError
from jaxrobust.models import create_model
from jaxrobust.models.convert_big_vision import (convert_big_vision_npz, load_big_vision_into,
                                                 to_big_vision_params)
from jaxrobust.models.convert_timm import (_flat_params, interpolate_bilinear, load_timm_into,
                                           to_timm_state_dict)
from jaxrobust.models.pretrained import checkpoint_format, load_pretrained_into

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
AUGREG, SCANNED = "bigvision_vit_2block", "bigvision_vit_2block_scanned"


def _fixture(name):
  with np.load(FIXTURES / f"{name}.npz") as f:
    data = {k: f[k] for k in f.files}
  meta = json.loads(str(data.pop("__meta__")))
  x, logits = data.pop("__x__"), data.pop("__logits__")
  return data, x, logits, meta


def _model(meta, seed=0, **over):
  kw = dict(meta["jaxrobust_model"])
  name = kw.pop("name")
  kw.update(over)
  kw.setdefault("num_classes", 10)
  return create_model(name, normalize="none", seed=seed, **kw)


def _params(model):
  return {k: np.asarray(v) for k, v in _flat_params(model).items()}


@pytest.mark.parametrize("name", [AUGREG, SCANNED])
def test_converted_fixture_reproduces_timm_logits(name):
  arrays, x, want, meta = _fixture(name)
  assert meta["timm"] and meta["torch"] and "_load_weights" in meta["checked"]
  model = _model(meta)
  assert load_big_vision_into(model, arrays) == {"kept": [], "resized": []}
  # float32 forward against timm's float64: differences are float32 rounding (~1e-7).
  np.testing.assert_allclose(np.asarray(model(x)), want, rtol=0, atol=1e-5)


def test_the_two_layouts_are_told_apart_and_read_alike():
  augreg, _, _, _ = _fixture(AUGREG)
  scanned, _, _, _ = _fixture(SCANNED)
  assert "Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel" in augreg
  assert scanned["params/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"].shape == (2, 32, 128)
  # big_vision's position embedding has no class-token row: the converter adds a zero one.
  model = _model(_fixture(SCANNED)[3])
  load_big_vision_into(model, scanned)
  pos = np.asarray(model.Transformer.posembed_input.pos_embedding[...])
  np.testing.assert_array_equal(pos[:, 0], 0.0)
  np.testing.assert_array_equal(pos[:, 1:], scanned["params/pos_embedding"])
  np.testing.assert_array_equal(
      np.asarray(model.Transformer.encoderblock_1.LayerNorm_2.scale[...]),
      scanned["params/Transformer/encoderblock/LayerNorm_1/scale"][1])


def test_prefixes_and_bfloat16():
  arrays, x, want, meta = _fixture(AUGREG)
  # An old Flax optimiser checkpoint: every name under opt/target/, optimiser state beside it.
  opt = {f"opt/target/{k}": v for k, v in arrays.items()}
  opt["opt/state/step"] = np.asarray(100)
  model = _model(meta)
  load_big_vision_into(model, opt)
  np.testing.assert_allclose(np.asarray(model(x)), want, rtol=0, atol=1e-5)
  # bfloat16 arrays come out of np.load as 2-byte voids: widened exactly to float32.
  bits = {k: (v.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16) for k, v in
          arrays.items()}
  bf16 = {k: b.view("V2") for k, b in bits.items()}
  model = _model(meta)
  load_big_vision_into(model, bf16)
  kernel = (bits["embedding/kernel"].astype(np.uint32) << 16).view(np.float32)
  assert not np.array_equal(kernel, arrays["embedding/kernel"])  # really rounded.
  np.testing.assert_array_equal(np.asarray(model.embedding.kernel[...]), kernel)


def test_export_round_trips_and_reproduces_the_fixture():
  arrays, x, want, meta = _fixture(AUGREG)
  model = _model(meta)
  load_big_vision_into(model, arrays)
  exported = to_big_vision_params(model)
  assert set(exported) == set(arrays)
  for k, v in arrays.items():
    np.testing.assert_array_equal(exported[k], v)
  other = _model(meta, seed=7)
  load_big_vision_into(other, exported)
  for k, v in _params(model).items():
    np.testing.assert_array_equal(_params(other)[k], v)
  # Google checkpoint -> jaxrobust -> timm state dict -> jaxrobust: the same network.
  third = _model(meta, seed=8)
  load_timm_into(third, to_timm_state_dict(model))
  np.testing.assert_allclose(np.asarray(third(x)), want, rtol=0, atol=1e-5)


def _block_sum_hwio(kernel, p):
  k = kernel.shape[0]
  out = np.zeros((p, p) + kernel.shape[2:])
  s = k // p
  for a in range(p):
    for b in range(p):
      out[a, b] = kernel[a * s:(a + 1) * s, b * s:(b + 1) * s].sum(axis=(0, 1))
  return out


@pytest.mark.parametrize("big_vision_layout", [False, True])
def test_a_larger_patch_is_block_summed_and_the_grid_resized(big_vision_layout):
  # A patch-8 ViT on 32 x 32 images (a 4 x 4 grid) exported, loaded into a patch-4 model (8 x 8).
  kw = dict(name="vit_s", image_size=32, width=32, depth=2, num_heads=4)
  src = create_model(patch_size=8, num_classes=10, normalize="none", seed=3, **kw)
  arrays = to_big_vision_params(src)
  rng = np.random.default_rng(0)
  pos = rng.normal(size=(1, 17, 32)).astype(np.float32)
  arrays["Transformer/posembed_input/pos_embedding"] = pos
  if big_vision_layout:  # no class-token row, prefixed.
    grid_pos = arrays.pop("Transformer/posembed_input/pos_embedding")[:, 1:]
    arrays = {f"params/{k}": v for k, v in dict(arrays, pos_embedding=grid_pos).items()}
  model = create_model(patch_size=4, num_classes=10, normalize="none", seed=4, **kw)
  report = load_pretrained_into(model, arrays)
  assert report["format"] == "big_vision" and report["kept"] == []
  assert report["resized"] == ["patch kernel 8x8 -> 4x4 (block sums)",
                               "pos_embedding (1, 17, 32) -> (1, 65, 32) (bilinear)"]
  kernel = np.asarray(src.embedding.kernel[...])
  assert model.embedding.kernel.shape == (4, 4, 3, 32)
  np.testing.assert_allclose(np.asarray(model.embedding.kernel[...]), _block_sum_hwio(kernel, 4),
                             rtol=1e-6, atol=1e-7)
  got = np.asarray(model.Transformer.posembed_input.pos_embedding[...])
  assert got.shape == (1, 65, 32)
  np.testing.assert_array_equal(got[0, 0], 0.0 if big_vision_layout else pos[0, 0])
  grid = interpolate_bilinear(pos[0, 1:].reshape(4, 4, 32), (8, 8)).reshape(64, 32)
  np.testing.assert_allclose(got[0, 1:], grid, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(model.head.kernel[...]),
                                np.asarray(src.head.kernel[...]))


def test_another_class_count_or_no_head_keeps_the_models_head():
  arrays, _, _, meta = _fixture(AUGREG)
  for given in (arrays, {k: v for k, v in arrays.items() if not k.startswith("head/")}):
    model = _model(meta, num_classes=7)
    head = np.asarray(model.head.kernel[...])
    report = load_big_vision_into(model, given)
    assert report["kept"] == ["head.bias", "head.kernel"]
    np.testing.assert_array_equal(np.asarray(model.head.kernel[...]), head)
    np.testing.assert_array_equal(np.asarray(model.Transformer.encoder_norm.scale[...]),
                                  arrays["Transformer/encoder_norm/scale"])


def test_mismatching_checkpoints_are_checkpoint_errors():
  arrays, _, _, meta = _fixture(AUGREG)
  model = _model(meta)
  with pytest.raises(CheckpointError, match="pre_logits"):
    convert_big_vision_npz({**arrays, "pre_logits/kernel": np.zeros((32, 32)),
                            "pre_logits/bias": np.zeros(32)}, model)
  with pytest.raises(CheckpointError, match="no class token"):
    convert_big_vision_npz({k: v for k, v in arrays.items() if k != "cls"}, model)
  with pytest.raises(CheckpointError, match="no learned position embedding"):
    convert_big_vision_npz({k: v for k, v in arrays.items() if "posembed" not in k}, model)
  with pytest.raises(CheckpointError, match="are not in the checkpoint"):
    convert_big_vision_npz({k: v for k, v in arrays.items()
                            if k != "Transformer/encoder_norm/bias"}, model)
  with pytest.raises(CheckpointError, match="no place in this ViT"):
    convert_big_vision_npz(arrays, _model(meta, depth=1))  # encoderblock_1 has nowhere to go.
  with pytest.raises(CheckpointError, match="no place.*qkv bias"):
    convert_big_vision_npz(arrays, _model(meta, qkv_bias=False))
  with pytest.raises(CheckpointError, match="no place"):
    convert_big_vision_npz({**arrays, "MAPHead_0/probe": np.zeros((1, 1, 32))}, model)
  with pytest.raises(CheckpointError, match="MlpBlock_3.Dense_0.bias has shape"):
    convert_big_vision_npz(arrays, _model(meta, mlp_ratio=2.0))
  with pytest.raises(CheckpointError, match="LayerNorm_\\[0, 1, 2\\]"):
    convert_big_vision_npz({**arrays, "Transformer/encoderblock_0/LayerNorm_1/scale":
                            np.ones(32)}, model)
  with pytest.raises(CheckpointError, match="not an HWIO"):
    convert_big_vision_npz({**arrays, "embedding/kernel": np.zeros((48, 32))}, model)
  with pytest.raises(CheckpointError, match="not a Google ViT checkpoint"):
    convert_big_vision_npz({"img/stem/kernel": np.zeros(3)}, model)
  # Only the model's type is read: an abstract Swin (no weights computed) is enough.
  swin = nnx.eval_shape(lambda: create_model("swin_cifar_tiny", num_classes=10, normalize="none"))
  with pytest.raises(CheckpointError, match="no Google checkpoint converter"):
    convert_big_vision_npz(arrays, swin)
  with pytest.raises(CheckpointError, match="no Google checkpoint export"):
    to_big_vision_params(swin)


def test_init_from_pretrained_dispatch_by_keys(tmp_path):
  arrays, x, want, meta = _fixture(AUGREG)
  timm_sd, tx, twant, tmeta = _fixture_timm()
  assert checkpoint_format(arrays) == "big_vision" and checkpoint_format(timm_sd) == "timm"
  np.savez(tmp_path / "augreg.npz", **arrays)
  np.savez(tmp_path / "timm.npz", **timm_sd)
  model = _model(meta)
  assert load_pretrained_into(model, str(tmp_path / "augreg.npz"))["format"] == "big_vision"
  np.testing.assert_allclose(np.asarray(model(x)), want, rtol=0, atol=1e-5)
  kw = dict(tmeta["jaxrobust_model"])
  model = create_model(kw.pop("name"), num_classes=10, normalize="none", **kw)
  assert load_pretrained_into(model, tmp_path / "timm.npz")["format"] == "timm"
  np.testing.assert_allclose(np.asarray(model(tx)), twant, rtol=0, atol=1e-5)
  with pytest.raises(CheckpointError, match=r"absent.npz.*is not a file.*augreg.*scratch=True"):
    load_pretrained_into(model, str(tmp_path / "absent.npz"))
  # Errors name the file.
  with pytest.raises(CheckpointError, match="augreg.npz.*no place"):
    load_pretrained_into(_model(meta, depth=1), str(tmp_path / "augreg.npz"))


def _fixture_timm():
  with np.load(FIXTURES / "timm_vit_2block.npz") as f:
    data = {k: f[k] for k in f.files}
  meta = json.loads(str(data.pop("__meta__")))
  return data, data.pop("__x__"), data.pop("__logits__"), meta


# --- live comparison with torch + timm (skipped without them) ---------------------------------


def test_live_against_timms_google_reader(tmp_path):
  torch = pytest.importorskip("torch")
  pytest.importorskip("timm")
  from timm.models.vision_transformer import (  # pylint: disable=g-import-not-at-top
      VisionTransformer, _load_weights)
  arrays, x, want, meta = _fixture(AUGREG)
  model = _model(meta, seed=1)
  load_big_vision_into(model, arrays)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2)).double()
  # Our export read by timm's Google-checkpoint reader, and our timm state dict by torch.
  np.savez(tmp_path / "ours.npz", **to_big_vision_params(model))
  kw = {k: v for k, v in meta["kwargs"].items()}
  tm = VisionTransformer(**kw).eval()
  _load_weights(tm, str(tmp_path / "ours.npz"))
  with torch.no_grad():
    np.testing.assert_allclose(tm.double()(xt).numpy(), want, rtol=0, atol=1e-5)
  tm = VisionTransformer(**kw).eval()
  tm.load_state_dict({k: torch.from_numpy(v) for k, v in to_timm_state_dict(model).items()})
  with torch.no_grad():
    np.testing.assert_allclose(tm.double()(xt).numpy(), want, rtol=0, atol=1e-5)
