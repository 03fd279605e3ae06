"""Google ViT checkpoints (augreg / ``vision_transformer`` / big_vision ``.npz``) -> jaxrobust ViT.

The Google checkpoints (e.g. ``gs://vit_models/augreg/*.npz`` of Steiner et
al., "How to train your ViT", and big_vision's ``.npz``) are flat ``.npz``
files of Flax parameters with ``/``-separated names. The jaxrobust
:class:`jaxrobust.models.vit.VisionTransformer` uses the same names
(``/`` -> ``.``), so the conversion is a rename plus the layouts and resizing
below; the reference for what each array means is timm's
``timm/models/vision_transformer.py:_load_weights`` (the loader timm uses for
these files), which this module follows:

* an optional prefix ``opt/target/`` (old Flax optimiser checkpoints),
  ``params/`` or ``params/img/`` (big_vision, image tower) in front of every
  name; keys outside the prefix (optimiser state, a text tower) are ignored;
* ``embedding/kernel`` (HWIO ``[p, p, C, D]``) and ``embedding/bias``;
  ``cls`` ``[1, 1, D]``; ``Transformer/encoder_norm/{scale,bias}``;
  ``head/{kernel [D, K], bias [K]}``;
* blocks ``Transformer/encoderblock_{i}/...``: the two LayerNorms, the
  attention ``query / key / value`` (``kernel [D, heads, D/heads]``, ``bias
  [heads, D/heads]``) and ``out`` (``kernel [heads, D/heads, D]``), the MLP
  ``Dense_0 / Dense_1``. The ``vision_transformer`` repo (augreg) numbers the
  submodules ``LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2,
  MlpBlock_3``; big_vision numbers them ``LayerNorm_0,
  MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0``. Both are read (the
  lower LayerNorm index is the pre-attention norm, as in timm);
* big_vision's scanned layout ``Transformer/encoderblock/...`` (one array per
  name with a leading ``[depth]`` axis) is unstacked into blocks;
* the position embedding: ``Transformer/posembed_input/pos_embedding``
  ``[1, 1 + N, D]`` (augreg: the first row belongs to the class token) or
  big_vision's ``pos_embedding`` ``[1, N, D]``, added BEFORE the class token
  is prepended; the latter is given a zero class-token row, which is the same
  network (big_vision's class token gets no position embedding);
* bfloat16 arrays (stored by numpy as 2-byte void) are widened to float32.

Resizing, as the timm path (:mod:`jaxrobust.models.convert_timm`, Mo et al.'s
``model_for_cifar/deit.py``): a patch kernel larger than the model's patch is
block-summed (:func:`~jaxrobust.models.convert_timm.patch_kernel_block_sum`,
16 x 16 -> 4 x 4), the position-embedding grid resized bilinearly
(:func:`~jaxrobust.models.convert_timm.resize_pos_embed`), and a head of
another class count is not loaded (the model keeps its own).

Refused with :class:`jaxrobust.errors.CheckpointError`: a ``pre_logits``
layer (the original ImageNet-21k ViTs' representation layer, which this ViT
does not have), no class token (big_vision ``gap`` / ``map`` pooling, a
``MAPHead``), a sine-cosine position embedding (no array), and any unknown or
missing name or unexplained shape.

GELU: the Google models were trained with Flax's ``nn.gelu`` (tanh
approximation); timm runs them with the exact erf GELU, as the jaxrobust ViT
does by default. Build the model with ``gelu_approximate=True``
(``config.model.kwargs``) for the Flax forward pass.

:func:`to_big_vision_params` goes back: the model's parameters as an augreg
``.npz`` dict.
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np
from flax import nnx

from jaxrobust.errors import CheckpointError
from jaxrobust.models.convert_timm import (fit_to_model, load_converted_into,
                                           patch_kernel_block_sum, resize_pos_embed)

PREFIXES = ("opt/target/", "params/img/", "params/", "")
_BLOCK = re.compile(r"Transformer/encoderblock_(\d+)/(LayerNorm|MultiHeadDotProductAttention|"
                    r"MlpBlock)_(\d+)/(.+)")
# Our (augreg) submodule names; big_vision's indices are renamed to these.
_OURS = {"MultiHeadDotProductAttention": "MultiHeadDotProductAttention_1",
         "MlpBlock": "MlpBlock_3"}
_TOP = ("embedding", "cls", "Transformer", "head")


def is_big_vision_checkpoint(keys) -> bool:
  """Whether checkpoint ``keys`` are Google / big_vision names (``/``-separated).

  timm state dict keys are ``.``-separated and never contain ``/``.
  """
  return any("/" in k for k in keys)


def _float32(value) -> np.ndarray:
  value = np.asarray(value)
  if value.dtype.kind == "V" and value.dtype.itemsize == 2:  # bfloat16 saved by numpy.
    return (value.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
  return value


def _strip_prefix(arrays: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
  for prefix in PREFIXES:
    if f"{prefix}embedding/kernel" in arrays:
      return {k[len(prefix):]: _float32(v) for k, v in arrays.items() if k.startswith(prefix)}
  raise CheckpointError(f"{source}: no 'embedding/kernel' (with or without a prefix "
                        f"{PREFIXES[:-1]}); not a Google ViT checkpoint. Give an augreg / "
                        f"big_vision ViT .npz or a timm state dict")


def _unscan(w: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
  """big_vision's scanned ``Transformer/encoderblock/X [depth, ...]`` -> ``encoderblock_{i}/X``."""
  scanned = {k: v for k, v in w.items() if k.startswith("Transformer/encoderblock/")}
  if not scanned:
    return w
  depths = {v.shape[0] if v.ndim else 0 for v in scanned.values()}
  if len(depths) != 1 or any(re.match(r"Transformer/encoderblock_\d+/", k) for k in w):
    raise CheckpointError(f"{source}: the scanned blocks Transformer/encoderblock/* have "
                          f"leading sizes {sorted(depths)} (or sit beside numbered blocks); "
                          f"expected one [depth, ...] stack")
  out = {k: v for k, v in w.items() if k not in scanned}
  for k, v in scanned.items():
    rest = k[len("Transformer/encoderblock/"):]
    for i in range(v.shape[0]):
      out[f"Transformer/encoderblock_{i}/{rest}"] = v[i]
  return out


def _rename_blocks(w: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
  """Block submodules of either numbering -> ``LayerNorm_0 / MHA_1 / LayerNorm_2 / MlpBlock_3``."""
  index: dict[tuple[str, str], set] = {}
  for k in w:
    m = _BLOCK.fullmatch(k)
    if m:
      index.setdefault((m[1], m[2]), set()).add(int(m[3]))
  rename = {}
  for (blk, kind), ids in index.items():
    if kind == "LayerNorm":
      if len(ids) != 2 or min(ids) != 0:
        raise CheckpointError(f"{source}: encoderblock_{blk} has LayerNorm_{sorted(ids)}; a "
                              f"pre-LN ViT block has two (LayerNorm_0 and LayerNorm_1 or _2)")
      rename[(blk, kind, 0)], rename[(blk, kind, max(ids))] = "LayerNorm_0", "LayerNorm_2"
    else:
      if len(ids) != 1:
        raise CheckpointError(f"{source}: encoderblock_{blk} has {kind}_{sorted(ids)}; a ViT "
                              f"block has one")
      rename[(blk, kind, min(ids))] = _OURS[kind]
  out = {}
  for k, v in w.items():
    m = _BLOCK.fullmatch(k)
    if m:
      k = f"Transformer/encoderblock_{m[1]}/{rename[(m[1], m[2], int(m[3]))]}/{m[4]}"
    out[k] = v
  return out


def convert_big_vision_npz(arrays: Mapping[str, np.ndarray], model: nnx.Module, *,
                           source: str = "checkpoint") -> dict:
  """A Google ViT checkpoint's arrays as the parameters of ``model`` (see the module doc).

  Args:
    arrays: ``{'/'-separated name: array}`` (e.g. ``np.load(path)``).
    model: a :class:`jaxrobust.models.vit.VisionTransformer` (only its shapes
      are read).
    source: how errors name the input (a path).

  Returns:
    ``{'params': nested float32 pure dict for nnx.replace_by_pure_dict,
    'kept': [the model's own parameters left as initialised: a head of another
    class count or a checkpoint without head], 'resized': [what was
    resized]}``.

  Raises:
    CheckpointError: not a ViT checkpoint, ``pre_logits``, no class token, no
      position-embedding array, an unknown / missing name or a shape that no
      resize rule covers.
  """
  from jaxrobust.models.vit import VisionTransformer  # pylint: disable=g-import-not-at-top
  if not isinstance(model, VisionTransformer):
    raise CheckpointError(f"no Google checkpoint converter for {type(model).__name__}; an "
                          f"augreg / big_vision .npz loads into a ViT / DeiT model")
  w = _rename_blocks(_unscan(_strip_prefix(arrays, source), source), source)
  if any(k.startswith("pre_logits/") for k in w):
    raise CheckpointError(f"{source} has a pre_logits (representation) layer that this ViT does "
                          f"not have; use a checkpoint without it (the augreg ones, "
                          f"gs://vit_models/augreg/*.npz), or, when the head is replaced "
                          f"anyway, delete the pre_logits/* arrays from the .npz (as timm drops "
                          f"them)")
  if "cls" not in w:
    raise CheckpointError(f"{source} has no class token 'cls' (big_vision gap / MAP pooling); "
                          f"the jaxrobust ViT pools with a class token: use a 'token'-pooled "
                          f"checkpoint (the augreg ViTs)")
  resized = []
  kernel = w["embedding/kernel"]
  patch = model.patch_size
  if kernel.ndim != 4:
    raise CheckpointError(f"{source}: embedding/kernel has shape {kernel.shape}, not an HWIO "
                          f"patch convolution [p, p, C, D] (dense / NaFlex patch embeddings "
                          f"are not supported)")
  if kernel.shape[:2] != patch:
    oihw = patch_kernel_block_sum(kernel.transpose(3, 2, 0, 1), patch[0])
    w["embedding/kernel"] = oihw.transpose(2, 3, 1, 0)
    resized.append(f"patch kernel {kernel.shape[0]}x{kernel.shape[1]} -> "
                   f"{patch[0]}x{patch[1]} (block sums)")
  if "pos_embedding" in w:  # big_vision: [1, N, D], no class-token row.
    pos = w.pop("pos_embedding")
    if pos.ndim != 3 or round(np.sqrt(pos.shape[1])) ** 2 != pos.shape[1]:
      raise CheckpointError(f"{source}: pos_embedding has shape {pos.shape}; expected "
                            f"[1, H*W, D] of a square grid")
    w["Transformer/posembed_input/pos_embedding"] = np.concatenate(
        [np.zeros_like(pos[:, :1]), pos], axis=1)
  key = "Transformer/posembed_input/pos_embedding"
  if key not in w:
    raise CheckpointError(f"{source} has no learned position embedding (pos_embedding or {key}; "
                          f"a sine-cosine 'sincos2d' one is not stored): not supported")
  want = model.Transformer.posembed_input.pos_embedding.shape
  if w[key].shape != tuple(want):
    old = w[key].shape
    if w[key].ndim != 3 or w[key].shape[-1] != want[-1]:
      raise CheckpointError(f"{source}: {key} has shape {old} but the model needs "
                            f"{tuple(want)}; build the model with the checkpoint's width")
    w[key] = resize_pos_embed(w[key], model.grid)
    resized.append(f"pos_embedding {old} -> {w[key].shape} (bilinear)")
  got, unknown = {}, []
  for k, v in w.items():
    if k.split("/", 1)[0] in _TOP:
      got[k.replace("/", ".")] = v
    else:
      unknown.append(k)
  out = fit_to_model(got, unknown, model, source=source, kind="ViT")
  return {**out, "resized": resized}


def load_big_vision_into(model: nnx.Module, arrays_or_path, *,
                         source: str | None = None) -> dict:
  """Loads a Google ViT checkpoint (a mapping, or the path of its ``.npz``) into ``model``.

  ``source`` names the input in errors (default: the path, or 'checkpoint').

  Returns:
    The ``kept`` / ``resized`` report of :func:`convert_big_vision_npz`.

  Raises:
    CheckpointError: see :func:`jaxrobust.models.convert_timm.load_state_dict_npz`
      and :func:`convert_big_vision_npz`.
  """
  return load_converted_into(model, arrays_or_path, convert_big_vision_npz, source=source,
                             default_source="checkpoint")


def to_big_vision_params(model: nnx.Module) -> dict[str, np.ndarray]:
  """A ViT / DeiT model's parameters as an augreg checkpoint ``{name: float32 array}``.

  The names of the ``vision_transformer`` repo (``embedding/kernel``, ``cls``,
  ``Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/query/kernel``,
  ..., ``head/kernel``); ``np.savez(path, **to_big_vision_params(model))``
  writes a file that :func:`load_big_vision_into` and timm's
  ``_load_weights`` read.

  Raises:
    CheckpointError: not a ViT, or parameters outside the ViT (auxiliary heads).
  """
  from jaxrobust.models.convert_timm import _flat_params  # pylint: disable=g-import-not-at-top
  from jaxrobust.models.vit import VisionTransformer  # pylint: disable=g-import-not-at-top
  if not isinstance(model, VisionTransformer):
    raise CheckpointError(f"no Google checkpoint export for {type(model).__name__}; only a "
                          f"ViT / DeiT exports to an augreg .npz")
  flat = _flat_params(model)
  other = sorted(k for k in flat if k.split(".", 1)[0] not in _TOP)
  if other:
    raise CheckpointError(f"parameters {other[:8]} have no augreg name; export the plain ViT "
                          f"(without auxiliary heads)")
  return {k.replace(".", "/"): np.asarray(v, np.float32) for k, v in flat.items()}
