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

:func:`to_timm_state_dict` goes back: a jaxrobust ViT / DeiT / Swin as a timm
state dict (fused qkv, HWIO -> OIHW, timm names) for ``load_state_dict`` in
torch. Google augreg / big_vision ``.npz`` checkpoints load through
:mod:`jaxrobust.models.convert_big_vision` with the same resizing;
:func:`jaxrobust.models.pretrained.load_pretrained_into` picks the converter
from the keys.
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
  """The arrays of an ``.npz`` checkpoint: a timm state dict or a Google augreg / big_vision file.

  A timm state dict is written with ``np.savez(path, **{k: v.numpy() ...})``
  (README "ViT recipes"); the Google checkpoints are ``.npz`` files already.

  Raises:
    CheckpointError: the file is absent or not an ``.npz`` of arrays.
  """
  if not path or not os.path.isfile(path):
    raise CheckpointError(
        f"config.model.init_from_pretrained={path!r} is not a file; give a Google augreg / "
        f"big_vision ViT .npz, or write the timm state dict as .npz on a machine with torch "
        f"(README 'ViT recipes': np.savez(PATH, **{{k: v.numpy() for k, v in "
        f"timm.create_model(NAME, pretrained=True).state_dict().items()}})), or set "
        f"--config.model.scratch=True")
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: np.asarray(f[k]) for k in f.files}
  except Exception as e:  # zipfile / pickle / ValueError: not an npz of arrays.
    raise CheckpointError(f"{path} is not an .npz of arrays ({type(e).__name__}: {e}); give a "
                          f"Google augreg / big_vision .npz or write a timm state_dict with "
                          f"np.savez (README 'ViT recipes')") from e


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
    class count, or a state dict without a head)], 'resized': [what was
    resized]}``.

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
  out = fit_to_model(got, unknown, model, source=source, kind=kind, noun="state dict")
  return {**out, "resized": resized}


def fit_to_model(got: Mapping[str, np.ndarray], unknown, model: nnx.Module, *, source: str,
                 kind: str, noun: str = "checkpoint") -> dict:
  """Checks converted arrays against ``model``'s parameters and nests them for NNX.

  Shared by the timm and the big_vision converters.

  Args:
    got: ``{dotted NNX parameter path: array}`` converted from the checkpoint.
    unknown: checkpoint keys no rule matched.
    model: the target model (only its parameter shapes are read).
    source: how errors name the input (a path).
    kind: 'ViT' or 'Swin', for the messages.
    noun: what the messages call the input ('state dict', 'checkpoint').

  Returns:
    ``{'params': nested float32 pure dict for nnx.replace_by_pure_dict, 'kept':
    [the model's own parameters left as initialised: a head of another class
    count, or no head in the checkpoint]}``.

  Raises:
    CheckpointError: ``got`` has a parameter the model lacks (or ``unknown`` is
      not empty), lacks one it needs (other than the head), or a shape differs
      outside the head.
  """
  want = _flat_params(model)
  got = dict(got)
  extra = sorted(set(got) - set(want)) + list(unknown)
  if extra:
    raise CheckpointError(f"{source}: keys {extra[:8]}{' ...' if len(extra) > 8 else ''} have "
                          f"no place in this {kind} ({type(model).__name__}); build the model "
                          f"with the checkpoint's architecture (depth, heads, qkv bias, "
                          f"distillation token) or convert another checkpoint")
  # A checkpoint without a classifier (a feature extractor) leaves the model's own head.
  missing = sorted(n for n in set(want) - set(got) if not n.startswith("head."))
  if missing:
    raise CheckpointError(f"{source}: the model's {missing[:8]}{' ...' if len(missing) > 8 else ''}"
                          f" are not in the {noun}; is it a {kind} of this architecture?")
  for name in sorted(set(want) & set(got)):
    if tuple(got[name].shape) != tuple(want[name].shape):
      if name.startswith("head."):  # another class count: keep the model's own head.
        del got[name]
        continue
      raise CheckpointError(f"{source}: {name} has shape {tuple(got[name].shape)} but the "
                            f"model needs {tuple(want[name].shape)}; build the model with the "
                            f"checkpoint's width / heads / window size")
  kept = sorted(set(want) - set(got))
  flat = {k: np.asarray(got.get(k, want[k]), np.float32) for k in want}
  nested_like = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return {"params": _nest(flat, nested_like), "kept": kept}


def load_timm_into(model: nnx.Module, state_dict_or_path, *, source: str | None = None) -> dict:
  """Loads a timm state dict (a mapping, or the path of its ``.npz``) into ``model`` in place.

  ``source`` names the input in errors (default: the path, or 'state dict').

  Returns:
    The ``kept`` / ``resized`` report of :func:`convert_timm_state_dict`.

  Raises:
    CheckpointError: see :func:`load_state_dict_npz` and
      :func:`convert_timm_state_dict`.
  """
  return load_converted_into(model, state_dict_or_path, convert_timm_state_dict,
                             source=source, default_source="state dict")


def load_converted_into(model: nnx.Module, arrays_or_path, convert: Callable, *,
                        source: str | None, default_source: str) -> dict:
  """Reads ``arrays_or_path`` (a mapping or an ``.npz`` path), converts, loads into ``model``.

  ``convert(arrays, model, source=...)`` returns ``{'params', 'kept', 'resized'}``
  (:func:`convert_timm_state_dict`, ``convert_big_vision_npz``); the parameters
  replace the model's in place. Returns the ``kept`` / ``resized`` report.
  """
  if isinstance(arrays_or_path, (str, os.PathLike)):
    source = source or str(arrays_or_path)
    arrays_or_path = load_state_dict_npz(str(arrays_or_path))
  out = convert(arrays_or_path, model, source=source or default_source)
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, out["params"])
  nnx.update(model, state)
  return {"kept": out["kept"], "resized": out["resized"]}


# --- back to timm ---------------------------------------------------------------------------


def _vit_to_timm(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """ViT / DeiT parameters (Google names) -> timm ``VisionTransformer`` keys (inverse of
  :func:`_vit_rules`)."""
  out, rest = {}, dict(flat)

  def take(name):
    return np.asarray(rest.pop(name))

  out["cls_token"] = take("cls")
  out["pos_embed"] = take("Transformer.posembed_input.pos_embedding")
  out["patch_embed.proj.weight"] = take("embedding.kernel").transpose(3, 2, 0, 1)  # HWIO->OIHW
  out["patch_embed.proj.bias"] = take("embedding.bias")
  depth = 0
  while f"Transformer.encoderblock_{depth}.LayerNorm_0.scale" in rest:
    src, dst = f"Transformer.encoderblock_{depth}.", f"blocks.{depth}."
    for ours, theirs in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
      out[dst + theirs + ".weight"] = take(src + ours + ".scale")
      out[dst + theirs + ".bias"] = take(src + ours + ".bias")
    mha = src + "MultiHeadDotProductAttention_1."
    # [D, heads, hd] -> rows [heads * hd, D] of the fused [3D, D] weight (query, key, value).
    kernels = [take(f"{mha}{n}.kernel") for n in ("query", "key", "value")]
    out[dst + "attn.qkv.weight"] = np.concatenate(
        [k.reshape(k.shape[0], -1).T for k in kernels], axis=0)
    if f"{mha}query.bias" in rest:
      out[dst + "attn.qkv.bias"] = np.concatenate(
          [take(f"{mha}{n}.bias").reshape(-1) for n in ("query", "key", "value")])
    proj = take(mha + "out.kernel")  # [heads, hd, D] -> [D, heads * hd]
    out[dst + "attn.proj.weight"] = proj.reshape(-1, proj.shape[-1]).T
    out[dst + "attn.proj.bias"] = take(mha + "out.bias")
    for r in (0, 1):
      out[f"{dst}mlp.fc{r + 1}.weight"] = take(f"{src}MlpBlock_3.Dense_{r}.kernel").T
      out[f"{dst}mlp.fc{r + 1}.bias"] = take(f"{src}MlpBlock_3.Dense_{r}.bias")
    depth += 1
  out["norm.weight"] = take("Transformer.encoder_norm.scale")
  out["norm.bias"] = take("Transformer.encoder_norm.bias")
  out["head.weight"] = take("head.kernel").T
  out["head.bias"] = take("head.bias")
  if rest:
    raise CheckpointError(f"parameters {sorted(rest)[:8]} have no timm name; export the plain "
                          f"ViT (without auxiliary heads)")
  return out


def _swin_to_timm(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Swin parameters -> timm >= 0.9 ``SwinTransformer`` keys (inverse of :func:`_swin_rules`)."""
  out = {}
  for name, value in flat.items():
    value = np.asarray(value)
    prefix, leaf = name.rsplit(".", 1)
    if prefix == "head":
      prefix = "head.fc"
    if leaf == "scale":
      leaf = "weight"
    elif leaf == "kernel":
      leaf, value = "weight", value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    out[f"{prefix}.{leaf}"] = value
  return out


def to_timm_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """A ViT / DeiT or Swin model's parameters as a timm ``state_dict`` (numpy, float32).

  The inverse of :func:`convert_timm_state_dict` at the model's own sizes:
  query / key / value ``[D, heads, D/heads]`` fused into ``attn.qkv.weight``
  ``[3D, D]`` (and ``.bias`` ``[3D]`` with qkv bias), ``out`` -> ``attn.proj``,
  kernels ``[in, out]`` -> ``weight [out, in]``, the patch kernel HWIO ->
  OIHW, ``scale`` -> ``weight``, Google names -> timm names. Load it in torch
  with ``model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``
  into ``timm.create_model(NAME, img_size=..., patch_size=..., num_classes=K)``
  of the same architecture (Swin's ``relative_position_index`` / ``attn_mask``
  are buffers timm recomputes and are not written).

  Args:
    model: a :class:`jaxrobust.models.vit.VisionTransformer` or
      :class:`jaxrobust.models.swin.SwinTransformer`.

  Returns:
    ``{timm key: float32 array}``.

  Raises:
    CheckpointError: another model, or parameters with no timm name (auxiliary
      heads).
  """
  from jaxrobust.models.swin import SwinTransformer  # pylint: disable=g-import-not-at-top
  from jaxrobust.models.vit import VisionTransformer  # pylint: disable=g-import-not-at-top
  if not isinstance(model, (VisionTransformer, SwinTransformer)):
    raise CheckpointError(f"no timm export for {type(model).__name__}; a ViT / DeiT or a Swin "
                          f"model exports to a timm state dict")
  flat = {k: np.asarray(v, np.float32) for k, v in _flat_params(model).items()}
  return (_vit_to_timm if isinstance(model, VisionTransformer) else _swin_to_timm)(flat)
