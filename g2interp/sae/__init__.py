"""JumpReLU sparse autoencoders (Gemma Scope recipe): model, trainer, evaluations."""

from g2interp.sae.evaluate import DeltaLossResult, SAEEvalResult, delta_lm_loss, evaluate_sae
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
    SAETrainingConfig,
    StepStats,
    TrainingForward,
    TrainingLoss,
    learning_rate,
    loss_and_grads,
    make_saes,
)

__all__ = [
    "CheckpointMismatchError",
    "DeltaLossResult",
    "JumpReLU",
    "JumpReLUSAE",
    "JumpReLUTrainingSAE",
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
    "TrainingForward",
    "TrainingLoss",
    "delta_lm_loss",
    "evaluate_sae",
    "learning_rate",
    "loss_and_grads",
    "make_saes",
    "rectangle",
]
