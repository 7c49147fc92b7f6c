"""nnU-Net v2's default trainer, stopped by a wall-clock budget instead of 1000 epochs.

Needs ``nnunetv2`` and ``torch`` (``experiments/peers/requirements.txt``). Everything that
makes nnU-Net nnU-Net is unchanged: the planned 2D U-Net, its augmentation, Dice + CE loss
with deep supervision and the ignore label, SGD (Nesterov, momentum 0.99, lr 1e-2). What
changes, so that a run fits ``budget_s`` seconds of a CPU:

* epochs are short (``iterations`` training batches, one validation batch), and training
  stops before an epoch that would end past the budget (the mean epoch time so far);
* the poly learning-rate decay runs over the budget's time, not over 1000 epochs:
  ``lr = 1e-2 * (1 - elapsed / budget) ** 0.9`` at each epoch's start, so the run ends near
  lr 0 as a full nnU-Net training does;
* only ``checkpoint_final.pth`` is written (no best/latest checkpoints each epoch).

``budget_s``, ``iterations`` and ``started`` (a ``time.monotonic()`` value: the clock starts
before the trainer is built, so building the network and starting the data loaders count)
are class attributes set by ``experiments/peers/run.py`` before the trainer is made. With
``nnUNet_extTrainer=experiments/peers`` in the environment ``nnUNetv2_train ... -tr
nnUNetTrainerBudget`` finds it too (then with the defaults below).
"""

import time

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerBudget(nnUNetTrainer):
  budget_s = 600.0
  iterations = 10
  started = None

  def __init__(
    self,
    plans: dict,
    configuration: str,
    fold: int,
    dataset_json: dict,
    device: torch.device = torch.device("cpu"),
  ):
    super().__init__(plans, configuration, fold, dataset_json, device)
    if type(self).started is None:
      type(self).started = time.monotonic()
    self.num_iterations_per_epoch = int(self.iterations)
    self.num_val_iterations_per_epoch = 1
    self.num_epochs = 10**6  # the clock stops training, see run_training
    self.save_every = 10**9

  def elapsed(self) -> float:
    return time.monotonic() - type(self).started

  def on_train_epoch_start(self):
    self.network.train()
    fraction = min(self.elapsed() / self.budget_s, 0.999)
    lr = self.initial_lr * (1.0 - fraction) ** 0.9
    for group in self.optimizer.param_groups:
      group["lr"] = lr
    self.print_to_log_file(
      f"Epoch {self.current_epoch}, {self.elapsed():.0f} s of "
      f"{self.budget_s:.0f}, learning rate {lr:.5f}"
    )
    self.logger.log("lrs", lr, self.current_epoch)

  def save_checkpoint(self, filename: str) -> None:
    if filename.endswith("checkpoint_final.pth"):
      super().save_checkpoint(filename)

  def run_training(self):
    """nnU-Net's loop (``nnUNetTrainer.run_training``) until the budget is spent."""
    self.on_train_start()
    epoch_seconds = []
    while True:
      expected = np.mean(epoch_seconds) if epoch_seconds else 0.0
      if epoch_seconds and self.elapsed() + expected > self.budget_s:
        break
      t0 = time.monotonic()
      self.on_epoch_start()
      self.on_train_epoch_start()
      outputs = [
        self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)
      ]
      self.on_train_epoch_end(outputs)
      with torch.no_grad():
        self.on_validation_epoch_start()
        val = [
          self.validation_step(next(self.dataloader_val))
          for _ in range(self.num_val_iterations_per_epoch)
        ]
        self.on_validation_epoch_end(val)
      self.on_epoch_end()
      epoch_seconds.append(time.monotonic() - t0)
    self.on_train_end()
