"""Data: sources (bundled .npz, TFDS), splits, augmentation, iterators."""
import jax.numpy as jnp

from jaxrobust.data.augment import random_crop_flip
from jaxrobust.data.info import (DATASETS, DatasetInfo, check_image_shape, dataset_info,
                                 register_dataset)
from jaxrobust.data.pipeline import TrainIterator, eval_batches
from jaxrobust.data.sources import (ENV_DATA_DIR, NUM_CLASSES, ArrayDataset,
                                    default_data_dir, load_numpy, load_split,
                                    load_tfds, train_val_split)


def to_float(images):
  """uint8 ``[B, H, W, C]`` in 0..255 -> float32 in [0, 1] (on device)."""
  return jnp.asarray(images, jnp.float32) / 255.0


__all__ = ["ArrayDataset", "DATASETS", "DatasetInfo", "ENV_DATA_DIR", "NUM_CLASSES",
           "TrainIterator", "check_image_shape", "dataset_info", "default_data_dir",
           "eval_batches", "load_numpy", "load_split", "load_tfds", "random_crop_flip",
           "register_dataset", "to_float", "train_val_split"]
