"""Exceptions raised on bad input. Each message names the problem and the fix.

Entry points (``python -m jaxrobust.train`` / ``jaxrobust.evaluate``) catch
:class:`JaxRobustError`, print its message on one line and exit with status 2.
"""


class JaxRobustError(Exception):
  """Base class of every user-facing error in jaxrobust."""


class ConfigError(JaxRobustError, ValueError):
  """A configuration value is unknown, missing or out of range."""


class DataError(JaxRobustError, FileNotFoundError):
  """A dataset cannot be found or has the wrong format."""


class CheckpointError(JaxRobustError):
  """A checkpoint is missing, corrupt or does not match the model/config."""


class NonFiniteLossError(JaxRobustError, FloatingPointError):
  """Training produced a NaN/inf loss; the last good checkpoint is kept."""
