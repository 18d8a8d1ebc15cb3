"""Fixtures shared by test modules."""

import atexit
import os
import shutil
import tempfile

import pytest

from backend.build import Build, BuildConfig
from backend.serving.bundle import Bundle
from tests.tiny_models import tiny_model

PROMPTS = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "star", "square")]

# latent pages drawn by tests (and by apps they start) go to a folder of this session, not the user's cache
os.environ["SAE_PAGE_CACHE"] = tempfile.mkdtemp(prefix="sae-pages-")
atexit.register(shutil.rmtree, os.environ["SAE_PAGE_CACHE"], ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """A bundle built from a tiny random model on nine colour × shape prompts, with the model attached."""
    root = tmp_path_factory.mktemp("tiny-bundle")
    (root / "prompts.txt").write_text("\n".join(PROMPTS))
    model = tiny_model()
    Build(BuildConfig(model="tiny", out=str(root / "bundle"), prompts=str(root / "prompts.txt"), num_steps=6, recorded_steps=3,
                      n_latents=32, k=4, epochs=1, sae_batch_size=128, top_n=4, images_per_shard=9), model=model).run()
    loaded = Bundle.load(root / "bundle")
    loaded.attach_model(model)
    return loaded
