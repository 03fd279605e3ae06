"""Pretrained ViT / DeiT / Swin weights from an ``.npz``: timm state dict or Google checkpoint.

``config.model.init_from_pretrained=PATH`` (the trainer) and any caller load
either format with :func:`load_pretrained_into`; the format is told by the
keys: Google augreg / big_vision checkpoints name arrays with ``/``
(``embedding/kernel``, ``Transformer/encoderblock_0/...``), timm state dicts
with ``.`` (``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight``).
"""
from __future__ import annotations

import os

from flax import nnx

from jaxrobust.models.convert_big_vision import is_big_vision_checkpoint, load_big_vision_into
from jaxrobust.models.convert_timm import load_state_dict_npz, load_timm_into


def checkpoint_format(keys) -> str:
  """``'big_vision'`` (Google augreg / big_vision names) or ``'timm'`` for checkpoint ``keys``."""
  return "big_vision" if is_big_vision_checkpoint(keys) else "timm"


def load_pretrained_into(model: nnx.Module, arrays_or_path) -> dict:
  """Loads pretrained weights (a mapping, or the path of an ``.npz``) into ``model`` in place.

  Dispatches on :func:`checkpoint_format` to
  :func:`jaxrobust.models.convert_big_vision.load_big_vision_into` (ViT / DeiT)
  or :func:`jaxrobust.models.convert_timm.load_timm_into` (ViT / DeiT / Swin);
  both block-sum a larger patch kernel, resize the position embedding
  bilinearly and keep the model's own head when the class count differs.

  Returns:
    ``{'format': 'timm' | 'big_vision', 'kept': [...], 'resized': [...]}``.

  Raises:
    CheckpointError: a missing / unreadable file, or a checkpoint that does not
      fit the model (one message naming the keys and the fix).
  """
  source, arrays = None, arrays_or_path
  if isinstance(arrays_or_path, (str, os.PathLike)):
    source, arrays = str(arrays_or_path), load_state_dict_npz(str(arrays_or_path))
  fmt = checkpoint_format(arrays)
  load = load_big_vision_into if fmt == "big_vision" else load_timm_into
  return {"format": fmt, **load(model, arrays, source=source)}
