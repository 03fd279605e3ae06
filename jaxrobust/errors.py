"""Exceptions raised on bad input. Each message names the problem and the fix.

Entry points (``python -m jaxrobust.train`` / ``jaxrobust.evaluate``) catch
:class:`JaxRobustError`, print its message on one line and exit with status 2.
A training run stopped by a preemption signal raises :class:`Preempted`
instead (not an error); the entry points exit with :data:`EXIT_PREEMPTED`.
"""
from __future__ import annotations

# Exit status of a training run that saved a checkpoint and stopped on
# SIGTERM/SIGUSR1: sysexits.h EX_TEMPFAIL ("temporary failure; the user is
# invited to retry"). launch/slurm.sbatch requeues the job on it.
EXIT_PREEMPTED = 75


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


class WorkdirInUseError(JaxRobustError):
  """Another live process holds the workdir's lock (one writer per workdir)."""


class Preempted(Exception):  # not a JaxRobustError: nothing is wrong with the input.
  """Training stopped on a preemption signal after saving a checkpoint.

  Rerunning the same command resumes from ``checkpoint``; the command-line
  entry points exit with :data:`EXIT_PREEMPTED`.

  Attributes:
    step: the training step of the saved checkpoint.
    checkpoint: its directory (``<workdir>/checkpoints/latest/<step>``).
    signal_name: the signal that asked to stop (``'SIGTERM'``, ``'SIGUSR1'``;
      ``'preemption notice'`` when only another process of the job received it).
  """

  def __init__(self, step: int, checkpoint: str, signal_name: str):
    self.step, self.checkpoint, self.signal_name = step, checkpoint, signal_name
    super().__init__(f"preempted ({signal_name}): saved the checkpoint of step {step} in "
                     f"{checkpoint} and stopped; rerun the same command to resume (exit status "
                     f"{EXIT_PREEMPTED})")


class StatePreempted(Preempted):
  """A long evaluation or analysis stopped on a preemption signal after saving its progress.

  Rerunning the same command resumes from the saved progress, with the result
  of an uninterrupted run.

  Attributes:
    what: what was saved (``'AutoAttack state'``, ``'MRC sweep progress'``).
    where: how far it got (for the message).
    checkpoint: the file or directory holding the progress.
    signal_name: as :class:`Preempted`.
  """

  def __init__(self, what: str, where: str, path: str, signal_name: str):  # pylint: disable=super-init-not-called
    self.step, self.what, self.where = None, what, where
    self.checkpoint, self.signal_name = path, signal_name
    Exception.__init__(self, f"preempted ({signal_name}): saved the {what} ({where}) in {path} "
                             f"and stopped; rerun the same command to resume (exit status "
                             f"{EXIT_PREEMPTED})")


class AutoAttackPreempted(StatePreempted):
  """An AutoAttack evaluation stopped on a preemption signal after saving its state.

  Rerunning the same ``python -m jaxrobust.evaluate ... --aa_state DIR``
  command resumes at the next batch; the result equals an uninterrupted run's.
  """

  def __init__(self, where: str, state_dir: str, signal_name: str):
    super().__init__("AutoAttack state", where, state_dir, signal_name)
