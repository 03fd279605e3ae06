"""timm state dicts -> jaxrobust ViT / DeiT / Swin parameters (offline, no torch needed).

A timm ``state_dict`` saved as an ``.npz`` (one array per key, the torch
names; see ``tests/fixtures/make_timm_fixtures.py`` and README "ViT recipes"
for the two lines that write it on a machine with torch) converts into the
NNX models of :mod:`jaxrobust.models.vit` (Google ViT / augreg names) and
:mod:`jaxrobust.models.swin` (timm names):

* linear ``weight [out, in]`` -> ``kernel [in, out]``; LayerNorm ``weight``
  -> ``scale``; the patch convolution OIHW -> HWIO;
* ViT: the fused ``attn.qkv`` ``[3D, D]`` split into ``query / key / value``
  ``[D, heads, D/heads]`` (timm's ``reshape(B, N, 3, heads, head_dim)``
  order), ``attn.proj`` -> ``out [heads, D/heads, D]``; ``cls_token``,
  ``pos_embed``, ``blocks.{i}`` -> ``Transformer.encoderblock_{i}``;
* Swin: the same names, kernels transposed; the original Microsoft / timm
  < 0.9 layout (``downsample`` at the END of a stage, ``head`` without
  ``.fc``) is renamed as timm's ``checkpoint_filter_fn`` does; the buffers
  ``relative_position_index`` / ``attn_mask`` are recomputed, not read.

Resizing as Mo et al.'s ``model_for_cifar/deit.py``:

* :func:`patch_kernel_block_sum` (``deit.py:519-524``): a ``16 x 16`` patch
  kernel becomes ``p x p`` by summing each ``16/p x 16/p`` block;
* :func:`resize_pos_embed` (``deit.py:482-501``): the position-embedding grid
  resized with torch ``F.interpolate(mode='bilinear', align_corners=False)``
  (no antialiasing) semantics, :func:`interpolate_bilinear`; class token kept;
* a classifier of another size (1000 ImageNet classes -> 10) is not loaded:
  the model keeps its own initial head, as timm's ``pretrained=True,
  num_classes=10`` does.

Anything else that does not fit (an unknown or missing key, a shape that no
rule above explains) raises :class:`jaxrobust.errors.CheckpointError`.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Mapping

import numpy as np
from flax import nnx

from jaxrobust.errors import CheckpointError

# Keys of a timm state dict that are buffers recomputed by the model.
_BUFFERS = ("relative_position_index", "attn_mask")


def interpolate_bilinear(grid: np.ndarray, size) -> np.ndarray:
  """torch ``F.interpolate(mode='bilinear', align_corners=False)`` of ``grid`` ``[H, W, C]``.

  Source coordinate of output pixel ``i`` (torch's
  ``area_pixel_compute_source_index``): ``max((i + 0.5) * H / H_out - 0.5,
  0)``; its two neighbours ``floor`` and ``min(floor + 1, H - 1)`` are
  weighted linearly; the same along W. No antialiasing (torch's default).

  Args:
    grid: float ``[H, W, C]``.
    size: ``(H_out, W_out)``.

  Returns:
    float64 ``[H_out, W_out, C]``.
  """
  grid = np.asarray(grid, np.float64)

  def axis_weights(n_in, n_out):
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo

  (h0, h1, wh), (w0, w1, ww) = (axis_weights(grid.shape[0], size[0]),
                                axis_weights(grid.shape[1], size[1]))
  rows = grid[h0] * (1 - wh)[:, None, None] + grid[h1] * wh[:, None, None]
  return rows[:, w0] * (1 - ww)[None, :, None] + rows[:, w1] * ww[None, :, None]


def resize_pos_embed(pos_embed: np.ndarray, grid, num_prefix_tokens: int = 1) -> np.ndarray:
  """``[1, prefix + H*W, D]`` -> ``[1, prefix + grid[0]*grid[1], D]`` (bilinear, class token kept).

  The old grid must be square (as the official ``resize_pos_embed``).

  Raises:
    CheckpointError: a non-square old grid.
  """
  pos_embed = np.asarray(pos_embed)
  prefix, flat = pos_embed[:, :num_prefix_tokens], pos_embed[0, num_prefix_tokens:]
  side = int(round(np.sqrt(flat.shape[0])))
  if side * side != flat.shape[0]:
    raise CheckpointError(f"pos_embed has {flat.shape[0]} grid tokens, not a square grid; "
                          f"cannot resize it to {tuple(grid)}")
  if (side, side) == tuple(grid):
    return pos_embed
  new = interpolate_bilinear(flat.reshape(side, side, -1), grid).reshape(1, -1, flat.shape[-1])
  return np.concatenate([prefix, new.astype(pos_embed.dtype)], axis=1)


def patch_kernel_block_sum(weight: np.ndarray, patch: int) -> np.ndarray:
  """A torch OIHW patch kernel ``[O, I, k, k]`` -> ``[O, I, patch, patch]`` by block sums.

  Mo et al. ``deit.py:521-524``: ``v.reshape(O, I, patch, k // patch, patch, k // patch)
  .sum(dim=[3, 5])``: output pixel ``(a, b)`` is the sum of the ``k/patch x k/patch``
  block of rows ``a*k/patch ..`` and columns ``b*k/patch ..`` (16 -> 4: 4 x 4 blocks).

  Raises:
    CheckpointError: ``k`` not a multiple of ``patch`` (the official code then
      falls back to a nearest-neighbour resize, which is not supported here).
  """
  o, i, kh, kw = weight.shape
  if kh % patch or kw % patch:
    raise CheckpointError(f"the pretrained {kh}x{kw} patch kernel is not a multiple of the "
                          f"model's patch {patch}; use a patch size that divides {kh}")
  return weight.reshape(o, i, patch, kh // patch, patch, kw // patch).sum(axis=(3, 5))


def load_state_dict_npz(path: str) -> dict[str, np.ndarray]:
  """The arrays of an ``.npz`` written with ``np.savez(path, **{k: v.numpy() ...})``.

  Raises:
    CheckpointError: the file is absent or not an ``.npz`` of arrays.
  """
  if not path or not os.path.isfile(path):
    raise CheckpointError(
        f"config.model.init_from_pretrained={path!r} is not a file; write the timm state dict "
        f"as .npz on a machine with torch (README 'ViT recipes': np.savez(PATH, **{{k: "
        f"v.numpy() for k, v in timm.create_model(NAME, pretrained=True).state_dict()."
        f"items()}})) or set --config.model.scratch=True")
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: np.asarray(f[k]) for k in f.files}
  except Exception as e:  # zipfile / pickle / ValueError: not an npz of arrays.
    raise CheckpointError(f"{path} is not an .npz of arrays ({type(e).__name__}: {e}); write "
                          f"it with np.savez from a timm state_dict (README 'ViT recipes')") from e


# --- key mapping --------------------------------------------------------------------------

_T = lambda w: np.asarray(w).T  # linear weight [out, in] -> kernel [in, out]
_ID = lambda w: np.asarray(w)
_HWIO = lambda w: np.asarray(w).transpose(2, 3, 1, 0)


def _vit_rules(heads: int) -> list[tuple[str, Callable]]:
  """(regex over timm keys, function(match, value) -> {nnx dotted path: array})."""

  def qkv(m, v):
    blk = f"Transformer.encoderblock_{m[1]}.MultiHeadDotProductAttention_1"
    kind = m[2]
    if kind == "weight":  # [3D, D] -> 3 x [D, heads, hd]
      d = v.shape[1]
      w = v.reshape(3, heads, d // heads, d)
      return {f"{blk}.{n}.kernel": w[s].transpose(2, 0, 1)
              for s, n in enumerate(("query", "key", "value"))}
    b = v.reshape(3, heads, -1)
    return {f"{blk}.{n}.bias": b[s] for s, n in enumerate(("query", "key", "value"))}

  def proj(m, v):
    blk = f"Transformer.encoderblock_{m[1]}.MultiHeadDotProductAttention_1.out"
    if m[2] == "weight":
      return {f"{blk}.kernel": v.T.reshape(heads, -1, v.shape[0])}
    return {f"{blk}.bias": v}

  def simple(target, fn=_ID):
    return lambda m, v: {target.format(*m.groups()): fn(v)}

  ln = {"weight": "scale", "bias": "bias"}
  blk = "Transformer.encoderblock_{0}."
  return [
      (r"cls_token", simple("cls")),
      (r"pos_embed", simple("Transformer.posembed_input.pos_embedding")),
      (r"patch_embed\.proj\.weight", simple("embedding.kernel", _HWIO)),
      (r"patch_embed\.proj\.bias", simple("embedding.bias")),
      (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", qkv),
      (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", proj),
      (r"blocks\.(\d+)\.norm1\.(weight|bias)",
       lambda m, v: {f"Transformer.encoderblock_{m[1]}.LayerNorm_0.{ln[m[2]]}": v}),
      (r"blocks\.(\d+)\.norm2\.(weight|bias)",
       lambda m, v: {f"Transformer.encoderblock_{m[1]}.LayerNorm_2.{ln[m[2]]}": v}),
      (r"blocks\.(\d+)\.mlp\.fc1\.weight", simple(blk + "MlpBlock_3.Dense_0.kernel", _T)),
      (r"blocks\.(\d+)\.mlp\.fc1\.bias", simple(blk + "MlpBlock_3.Dense_0.bias")),
      (r"blocks\.(\d+)\.mlp\.fc2\.weight", simple(blk + "MlpBlock_3.Dense_1.kernel", _T)),
      (r"blocks\.(\d+)\.mlp\.fc2\.bias", simple(blk + "MlpBlock_3.Dense_1.bias")),
      (r"norm\.(weight|bias)", lambda m, v: {f"Transformer.encoder_norm.{ln[m[1]]}": v}),
      (r"head\.weight", simple("head.kernel", _T)),
      (r"head\.bias", simple("head.bias")),
  ]


def _swin_rules() -> list[tuple[str, Callable]]:
  ln = {"weight": "scale", "bias": "bias"}

  def generic(m, v):
    prefix, leaf = m[1], m[2]
    if prefix.endswith(("norm", "norm1", "norm2")):
      return {f"{prefix}.{ln[leaf]}": v}
    if prefix == "patch_embed.proj":
      return {f"{prefix}.{'kernel' if leaf == 'weight' else 'bias'}":
              _HWIO(v) if leaf == "weight" else v}
    return {f"{prefix}.{'kernel' if leaf == 'weight' else 'bias'}":
            _T(v) if leaf == "weight" else v}

  return [
      (r"(layers\.\d+\.blocks\.\d+\.attn)\.relative_position_bias_table",
       lambda m, v: {f"{m[1]}.relative_position_bias_table": v}),
      (r"head\.fc\.(weight|bias)",
       lambda m, v: {f"head.{'kernel' if m[1] == 'weight' else 'bias'}":
                     _T(v) if m[1] == "weight" else v}),
      (r"(.+)\.(weight|bias)", generic),
  ]


def _swin_rename_old_layout(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Microsoft / timm < 0.9 Swin keys -> timm >= 0.9 keys (timm's ``checkpoint_filter_fn``)."""
  if "layers.0.downsample.reduction.weight" not in sd:
    return dict(sd)
  out = {}
  for k, v in sd.items():
    k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) + 1}.downsample", k)
    out[k.replace("head.", "head.fc.") if k.startswith("head.") else k] = v
  return out


def _flat_params(model: nnx.Module) -> dict[str, tuple]:
  state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  out = {}

  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[f"{prefix}{k}"] = v
  walk(state, "")
  return out


def _nest(flat: Mapping[str, np.ndarray], like: dict) -> dict:
  """``flat`` dotted paths in the nesting (and integer keys) of ``like``."""
  out = {}
  for k, v in like.items():
    if isinstance(v, dict):
      out[k] = _nest({p[len(str(k)) + 1:]: a for p, a in flat.items()
                      if p.startswith(f"{k}.")}, v)
    else:
      out[k] = flat[str(k)]
  return out


def convert_timm_state_dict(state_dict: Mapping[str, np.ndarray], model: nnx.Module, *,
                            source: str = "state dict") -> dict:
  """The timm ``state_dict`` as the parameters of ``model`` (a ViT / DeiT or a Swin).

  Args:
    state_dict: ``{timm key: array}`` (e.g. :func:`load_state_dict_npz`).
    model: a :class:`jaxrobust.models.vit.VisionTransformer` or
      :class:`jaxrobust.models.swin.SwinTransformer` (only its shapes are read).
    source: how errors name the input (a path).

  Returns:
    ``{'params': nested pure dict for nnx.replace_by_pure_dict, 'kept': [dotted
    names of the model's own parameters left as they were (the head of another
    class count)], 'resized': [what was resized]}``.

  Raises:
    CheckpointError: an unknown / missing key or a shape mismatch that no
      resize rule covers (the message names the keys and the fix).
  """
  from jaxrobust.models.swin import SwinTransformer  # pylint: disable=g-import-not-at-top
  from jaxrobust.models.vit import VisionTransformer  # pylint: disable=g-import-not-at-top
  want = _flat_params(model)
  if isinstance(model, SwinTransformer):
    sd, rules, kind = _swin_rename_old_layout(state_dict), _swin_rules(), "Swin"
  elif isinstance(model, VisionTransformer):
    heads = model.Transformer.encoderblock_0.MultiHeadDotProductAttention_1.num_heads
    sd, rules, kind = dict(state_dict), _vit_rules(heads), "ViT"
  else:
    raise CheckpointError(f"no timm converter for {type(model).__name__}; a timm state dict "
                          f"loads into a ViT / DeiT or a Swin model")
  got, unknown, resized = {}, [], []
  for key, value in sd.items():
    if key.rsplit(".", 1)[-1] in _BUFFERS:
      continue
    value = np.asarray(value)
    if key == "patch_embed.proj.weight" and value.ndim == 4:
      patch = (model.patch_size if kind == "ViT" else model.patch_size)[0]
      if value.shape[2] != patch:
        value = patch_kernel_block_sum(value, patch)
        resized.append(f"patch kernel {sd[key].shape[2]}x{sd[key].shape[3]} -> {patch}x{patch} "
                       f"(block sums)")
    if key == "pos_embed" and kind == "ViT":
      target = want["Transformer.posembed_input.pos_embedding"].shape
      if value.shape != tuple(target):
        value = resize_pos_embed(value, model.grid)
        resized.append(f"pos_embed {sd[key].shape} -> {value.shape} (bilinear)")
    for pattern, fn in rules:
      m = re.fullmatch(pattern, key)
      if m:
        got.update(fn(m, value))
        break
    else:
      unknown.append(key)
  extra = sorted(set(got) - set(want)) + unknown
  if extra:
    raise CheckpointError(f"{source}: keys {extra[:8]}{' ...' if len(extra) > 8 else ''} have "
                          f"no place in this {kind} ({type(model).__name__}); build the model "
                          f"with the checkpoint's architecture (depth, heads, qkv bias, "
                          f"distillation token) or convert another checkpoint")
  missing = sorted(set(want) - set(got))
  kept = []
  for name in sorted(set(want) & set(got)):
    if tuple(got[name].shape) != tuple(want[name].shape):
      if name.startswith("head."):  # another class count: keep the model's own head.
        del got[name]
        continue
      raise CheckpointError(f"{source}: {name} has shape {tuple(got[name].shape)} but the "
                            f"model needs {tuple(want[name].shape)}; build the model with the "
                            f"checkpoint's width / heads / window size")
  for name in sorted(set(want) - set(got)):
    if name.startswith("head.") and name not in missing:
      kept.append(name)
  if missing:
    raise CheckpointError(f"{source}: the model's {missing[:8]}{' ...' if len(missing) > 8 else ''}"
                          f" are not in the state dict; is it a {kind} of this architecture?")
  flat = {k: np.asarray(got.get(k, want[k]), np.float32) for k in want}
  nested_like = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return {"params": _nest(flat, nested_like), "kept": kept, "resized": resized}


def load_timm_into(model: nnx.Module, state_dict_or_path) -> dict:
  """Loads a timm state dict (a mapping, or the path of its ``.npz``) into ``model`` in place.

  Returns:
    The ``kept`` / ``resized`` report of :func:`convert_timm_state_dict`.

  Raises:
    CheckpointError: see :func:`load_state_dict_npz` and
      :func:`convert_timm_state_dict`.
  """
  source = "state dict"
  if isinstance(state_dict_or_path, (str, os.PathLike)):
    source = str(state_dict_or_path)
    state_dict_or_path = load_state_dict_npz(source)
  out = convert_timm_state_dict(state_dict_or_path, model, source=source)
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, out["params"])
  nnx.update(model, state)
  return {"kept": out["kept"], "resized": out["resized"]}
