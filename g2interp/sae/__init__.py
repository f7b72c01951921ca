"""JumpReLU sparse autoencoders (Gemma Scope recipe): model, trainer, data-parallel training, evaluations,
and the ``train-sae`` run (corpus -> activations -> SAE -> evaluation)."""

from g2interp.sae.distributed import DataParallel, init_data_parallel, shard_batches
from g2interp.sae.evaluate import (
    DeltaLossResult,
    SAEEvalResult,
    delta_lm_loss,
    evaluate_sae,
    next_token_loss,
)
from g2interp.sae.run import TrainSAEConfig, TrainSAEResult, train_sae
from g2interp.sae.sae import JumpReLUSAE, SAEConfig, SAEFormatError
from g2interp.sae.ste import JumpReLU, Step, rectangle
from g2interp.sae.trainer import (
    CheckpointMismatchError,
    NonFiniteError,
    SAEMetrics,
    SAETrainer,
    StepMetrics,
)
from g2interp.sae.training import (
    JumpReLUTrainingSAE,
    L0Steer,
    SAETrainingConfig,
    StepStats,
    TrainingForward,
    TrainingLoss,
    init_from_data,
    learning_rate,
    loss_and_grads,
    make_saes,
    steer_l0_coefficient,
)

__all__ = [
    "CheckpointMismatchError",
    "DataParallel",
    "DeltaLossResult",
    "JumpReLU",
    "JumpReLUSAE",
    "JumpReLUTrainingSAE",
    "L0Steer",
    "NonFiniteError",
    "SAEConfig",
    "SAEEvalResult",
    "SAEFormatError",
    "SAEMetrics",
    "SAETrainer",
    "SAETrainingConfig",
    "Step",
    "StepMetrics",
    "StepStats",
    "TrainSAEConfig",
    "TrainSAEResult",
    "TrainingForward",
    "TrainingLoss",
    "delta_lm_loss",
    "evaluate_sae",
    "init_data_parallel",
    "init_from_data",
    "learning_rate",
    "loss_and_grads",
    "make_saes",
    "next_token_loss",
    "rectangle",
    "shard_batches",
    "steer_l0_coefficient",
    "train_sae",
]
