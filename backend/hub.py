"""The Hugging Face Hub's offline switches, read in one place for model and bundle loading (no heavy imports)."""

import os

OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE")


def hub_offline() -> bool:
    """Whether the environment forbids network look-ups (HF_HUB_OFFLINE and friends)."""
    return any(os.environ.get(flag, "").strip().lower() in {"1", "true", "yes", "on"} for flag in OFFLINE_FLAGS)
