"""File names of latent dashboards, kept beside the SAE they describe (``SAE_FOLDER/dashboards/``)."""

from __future__ import annotations

#: Sub-folder of an SAE folder holding its dashboards.
DASHBOARDS_DIR = "dashboards"
#: Per-latent arrays (top contexts, histograms, logit effects, densities).
DASHBOARD_TENSORS_FILE = "dashboards.safetensors"
#: Decoded text of every token id the tensors mention (``{"id": "text"}``).
DASHBOARD_VOCAB_FILE = "tokens.json"
#: Written last: what was built from what; its presence marks a complete build.
DASHBOARD_MANIFEST_FILE = "dashboards.json"
#: Version of the layout above.
DASHBOARD_FORMAT = 1
