"""Sparse autoencoders and transcoders: the inference JumpReLU SAE (SAELens's format, Gemma Scope 1 and 2
import), one trainer for JumpReLU (Gemma Scope 2's target-L0 recipe), BatchTopK and Matryoshka SAEs and
transcoders, recipes, evaluations, the run that trains them from an activation source (``train_saes``,
the engine of ``g2interp train-sae``), and SAEs inside the model (``splice``, ``Steering``)."""

from g2interp.distributed import DataParallel, init_data_parallel
from g2interp.sae.architectures import inference_sae, make_saes, training_sae
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
from g2interp.sae.gemma_scope import GemmaScopeHooks, gemma_scope_hooks, load_gemma_scope
from g2interp.sae.jumprelu import JumpReLUTrainingSAE, init_from_data, loss_and_grads
from g2interp.sae.pipeline import EvalConfig, SAESpec, TrainedSAE, plan_saes, train_saes
from g2interp.sae.recipes import RECIPES, Recipe, recipe
from g2interp.sae.sae import (
    JumpReLUSAE,
    SAEConfig,
    SAEFormatError,
    check_transcoder_hooks,
    transcoder_hook_out,
)
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
    ARCHITECTURES,
    GradStats,
    SAETrainingConfig,
    StepInput,
    StepStats,
    TrainingForward,
    TrainingLoss,
    TrainingSAE,
    learning_rate,
)

__all__ = [
    "ARCHITECTURES",
    "RECIPES",
    "CheckpointMismatchError",
    "DataParallel",
    "DeltaLossResult",
    "EvalConfig",
    "GemmaScopeHooks",
    "GradStats",
    "JumpReLU",
    "JumpReLUSAE",
    "JumpReLUTrainingSAE",
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
    "StepInput",
    "StepMetrics",
    "StepStats",
    "TrainedSAE",
    "TrainingForward",
    "TrainingLoss",
    "TrainingSAE",
    "check_transcoder_hooks",
    "delta_lm_loss",
    "evaluate_on_source",
    "evaluate_sae",
    "gemma_scope_hooks",
    "inference_sae",
    "init_data_parallel",
    "init_from_data",
    "learning_rate",
    "load_gemma_scope",
    "loss_and_grads",
    "make_saes",
    "next_token_loss",
    "plan_saes",
    "recipe",
    "rectangle",
    "splice",
    "steered",
    "steering_hooks",
    "train_saes",
    "train_together",
    "training_sae",
    "transcoder_hook_out",
]
