"""File names and format markers of SAE artifacts; the one place they are spelled."""

from __future__ import annotations

#: An SAE folder, in SAELens's layout (``sae_lens.SAE.load_from_disk`` reads it).
SAE_CFG_FILE = "cfg.json"
SAE_WEIGHTS_FILE = "sae_weights.safetensors"
#: Per-latent log10 firing density, as SAELens writes it beside a trained SAE (key ``"sparsity"``).
SAE_SPARSITY_FILE = "sparsity.safetensors"

#: Evaluation results written beside the SAE.
EVAL_RESULTS_FILE = "eval.json"
DELTA_LOSS_RESULTS_FILE = "delta_lm_loss.json"

#: Gemma Scope releases one ``params.npz`` per SAE.
GEMMA_SCOPE_PARAMS_FILE = "params.npz"
#: Gemma Scope 2 releases a folder per SAE or transcoder: ``params.safetensors`` and, for most,
#: ``config.json`` (whose ``architecture`` is ``jump_relu``).
GEMMA_SCOPE_2_PARAMS_FILE = "params.safetensors"
GEMMA_SCOPE_2_CONFIG_FILE = "config.json"
GEMMA_SCOPE_2_ARCHITECTURE = "jump_relu"

#: Trainer checkpoint: one folder per saved step, and a pointer to the newest complete one.
CHECKPOINT_DIR_TEMPLATE = "step_{step:09d}"
CHECKPOINT_LATEST_FILE = "latest.json"
CHECKPOINT_TENSORS_FILE = "trainer_state.safetensors"
CHECKPOINT_STATE_FILE = "trainer_state.json"
#: Final inference SAEs written by the trainer, one folder per SAE of a sweep.
FINAL_SAE_DIR_TEMPLATE = "sae_{index}"
#: Optional JSON-lines metrics log.
METRICS_LOG_FILE = "metrics.jsonl"

#: ``architecture`` value in SAELens's cfg.json for JumpReLU SAEs.
JUMPRELU_ARCHITECTURE = "jumprelu"
#: ... for JumpReLU transcoders, without and with an affine skip connection (SAELens's names).
JUMPRELU_TRANSCODER_ARCHITECTURE = "jumprelu_transcoder"
JUMPRELU_SKIP_TRANSCODER_ARCHITECTURE = "jumprelu_skip_transcoder"
#: Written as ``metadata.sae_lens_version``: the cfg.json layout is SAELens's >= 6.0 one, and SAELens
#: reads a folder without this field as a pre-6.0 config and renames its keys.
SAELENS_FORMAT_VERSION = "6.0.0"

#: Hook points an SAE spliced into a model adds under its hook's name, e.g.
#: ``blocks.6.hook_resid_post.hook_sae_acts_post``: SAELens's ``HookedSAETransformer`` names.
SAE_SPLICE_HOOKS = (
    "hook_sae_input",
    "hook_sae_acts_pre",
    "hook_sae_acts_post",
    "hook_sae_recons",
    "hook_sae_error",
    "hook_sae_output",
)
