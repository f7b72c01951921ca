"""JumpReLU sparse autoencoders (Gemma Scope recipe): model, trainer, recipes, evaluations, the run
that trains them from an activation source (``train_saes``, the engine of ``g2interp train-sae``), and
SAEs inside the model (``splice``, ``Steering``)."""

from g2interp.distributed import DataParallel, init_data_parallel
from g2interp.sae.checkpoint import CheckpointMismatchError
from g2interp.sae.evaluate import (
    DeltaLossResult,
    SAEEvalResult,
    SAEEvaluation,
    delta_lm_loss,
    evaluate_on_source,
    evaluate_sae,
    next_token_loss,
)
from g2interp.sae.pipeline import EvalConfig, SAESpec, TrainedSAE, plan_saes, train_saes
from g2interp.sae.recipes import RECIPES, Recipe, recipe
from g2interp.sae.sae import JumpReLUSAE, SAEConfig, SAEFormatError
from g2interp.sae.splice import Splice, SplicedSAE, Steering, splice, steered, steering_hooks
from g2interp.sae.ste import JumpReLU, Step, rectangle
from g2interp.sae.trainer import (
    NonFiniteError,
    SAEMetrics,
    SAETrainer,
    StepMetrics,
    train_together,
)
from g2interp.sae.training import (
    GradStats,
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
    "RECIPES",
    "CheckpointMismatchError",
    "DataParallel",
    "DeltaLossResult",
    "EvalConfig",
    "GradStats",
    "JumpReLU",
    "JumpReLUSAE",
    "JumpReLUTrainingSAE",
    "L0Steer",
    "NonFiniteError",
    "Recipe",
    "SAEConfig",
    "SAEEvalResult",
    "SAEEvaluation",
    "SAEFormatError",
    "SAEMetrics",
    "SAESpec",
    "SAETrainer",
    "SAETrainingConfig",
    "Splice",
    "SplicedSAE",
    "Steering",
    "Step",
    "StepMetrics",
    "StepStats",
    "TrainedSAE",
    "TrainingForward",
    "TrainingLoss",
    "delta_lm_loss",
    "evaluate_on_source",
    "evaluate_sae",
    "init_data_parallel",
    "init_from_data",
    "learning_rate",
    "loss_and_grads",
    "make_saes",
    "next_token_loss",
    "plan_saes",
    "recipe",
    "rectangle",
    "splice",
    "steer_l0_coefficient",
    "steered",
    "steering_hooks",
    "train_saes",
    "train_together",
]
