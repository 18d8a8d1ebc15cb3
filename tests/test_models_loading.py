import json

import pytest
import torch

from backend.diffusion.models import load_model, save_model
from backend.diffusion.sampler import sample
from backend.errors import ExplorerError
from tests.tiny_models import tiny_model


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("with_vae", [False, True])
def test_a_saved_tiny_model_loads_offline_and_samples_identically(tmp_path, offline, with_vae):
    original = tiny_model(with_vae=with_vae)
    save_model(original, tmp_path)
    loaded = load_model(str(tmp_path), device="cpu")
    assert (loaded.vae is None) == (not with_vae)
    assert loaded.dtype == torch.float32
    expected = sample(original, "a red circle", seed=2, num_steps=3, guidance_scale=2.0).images
    assert torch.equal(sample(loaded, "a red circle", seed=2, num_steps=3, guidance_scale=2.0).images, expected)


def test_explicit_dtype_is_respected(tmp_path, offline):
    save_model(tiny_model(), tmp_path)
    assert load_model(str(tmp_path), device="cpu", dtype=torch.float16).dtype == torch.float16


def test_missing_component_names_what_to_pass(tmp_path, offline):
    save_model(tiny_model(), tmp_path)
    (tmp_path / "text_encoder" / "config.json").rename(tmp_path / "unet_config_moved.json")
    with pytest.raises(ExplorerError, match="Pass --model"):
        load_model(str(tmp_path), device="cpu")


def test_directory_without_the_sd_layout_is_refused(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ExplorerError, match="lacks text_encoder/, tokenizer/, scheduler/"):
        load_model(str(tmp_path), device="cpu")


def test_weights_that_do_not_match_the_config_are_refused_not_randomized(tmp_path, offline):
    save_model(tiny_model(), tmp_path)
    config_path = tmp_path / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_hidden_layers"] += 1  # one layer more than the weights hold
    config_path.write_text(json.dumps(config))
    with pytest.raises(ExplorerError, match="lack"):
        load_model(str(tmp_path), device="cpu")


def test_a_unet_checkpoint_missing_a_tensor_is_refused_not_randomized(tmp_path, offline):
    from safetensors.torch import load_file, save_file

    save_model(tiny_model(), tmp_path)
    weights = next((tmp_path / "unet").glob("*.safetensors"))
    state = load_file(weights)
    del state["conv_out.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ExplorerError, match="unet weights .* lack 1 tensors"):
        load_model(str(tmp_path), device="cpu")


def test_uncached_hub_id_offline_is_a_clear_error(tmp_path, offline, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(ExplorerError, match="offline mode"):
        load_model("stable-diffusion-v1-5/stable-diffusion-v1-5", device="cpu")
