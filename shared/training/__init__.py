"""Training: the loop (`train` on Lightning Fabric: setup -> main -> fit), the runtime layer (`prepare_model`),
checkpoints and exact resume, the optimiser and LR schedule, deterministic resumable batches, logs, periodic samples,
and the stage CLIs (`run_cli`)."""

from ..runs import checkpoints, latest_checkpoint
from .batches import StepBatches, to_batch
from .checkpoint import load_error
from .cli import check_struct, run_cli
from .loop import Stop, make_fabric, train
from .meters import open_metrics, tensorboard_writer
from .optim import EMA, lr_factor, optimizer
from .runtime import prepare_model
from .samples import training_sampler

__all__ = ["EMA", "Stop", "StepBatches", "check_struct", "checkpoints", "latest_checkpoint", "load_error",
           "lr_factor", "make_fabric", "open_metrics", "optimizer", "prepare_model", "run_cli", "tensorboard_writer",
           "to_batch", "train", "training_sampler"]
