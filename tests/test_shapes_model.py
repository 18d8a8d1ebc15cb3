"""The shapes model: built from config within its budget, exported in the diffusers layout, resumed exactly."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from backend.diffusion.models import load_model
from backend.diffusion.sampler import sample
from backend.errors import ExplorerError
from backend.shapes.captions import build_tokenizer
from backend.shapes.export import MODEL_PARTS, save_export
from backend.shapes.model import ModelConfig, build_scheduler, build_text_encoder, build_unet
from backend.shapes.train import TrainConfig, Trainer, prepare_run

TINY = ModelConfig(block_out_channels=(8, 16, 16, 16), attention_heads=2, text_hidden=16, text_layers=1, text_heads=2)
SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints" / "shapes-model"


def tiny_weights(tokenizer) -> dict[str, torch.Tensor]:
    """Fresh weights of the tiny model, keyed `<module>.<parameter>` as training and exports key them."""
    weights = {f"unet.{k}": v for k, v in build_unet(TINY).state_dict().items()}
    return weights | {f"text_encoder.{k}": v for k, v in build_text_encoder(TINY, tokenizer).state_dict().items()}


def test_default_model_fits_the_weight_budget():
    tokenizer = build_tokenizer()
    config = ModelConfig()
    modules = (build_unet(config), build_text_encoder(config, tokenizer))
    fp16_bytes = 2 * sum(p.numel() for m in modules for p in m.parameters())
    assert fp16_bytes <= 40e6


def test_text_encoder_matches_tokenizer():
    tokenizer = build_tokenizer()
    encoder = build_text_encoder(TINY, tokenizer)
    assert encoder.config.vocab_size == len(tokenizer)
    assert encoder.config.max_position_embeddings == tokenizer.model_max_length
    assert encoder.config.eos_token_id == tokenizer.eos_token_id


def test_scheduler_is_zero_snr_v_prediction():
    scheduler = build_scheduler(TINY)
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.alphas_cumprod[-1] == 0


def test_export_loads_and_samples(tmp_path):
    tokenizer = build_tokenizer()
    weights = tiny_weights(tokenizer)
    path = save_export(weights, TINY, tokenizer, tmp_path / "export", step=0)
    assert all((path / part).exists() for part in MODEL_PARTS)
    model = load_model(str(path), device="cpu")
    assert model.vae is None and model.unet.dtype == torch.float32
    images = sample(model, ["a red circle in the center"], seed=0, num_steps=2, guidance_scale=4.0).images
    assert images.shape == (1, 3, 32, 32)


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread, and far faster when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _trainer(run_dir: Path, resume: bool) -> Trainer:
    config = TrainConfig(run_dir=str(run_dir), resume=resume, batch_size=2, warmup_steps=1)
    return Trainer(config, TINY, torch.device("cpu"))


def test_resume_continues_exactly(tmp_path, one_thread):
    straight = _trainer(tmp_path / "a", resume=False)
    for _ in range(3):
        straight.train_step()
    interrupted = _trainer(tmp_path / "b", resume=False)
    interrupted.train_step()
    interrupted.save_checkpoint()
    resumed = _trainer(tmp_path / "b", resume=True)
    resumed.load_checkpoint()
    for _ in range(2):
        resumed.train_step()
    assert resumed.step == straight.step == 3
    for key, value in straight.state_tensors().items():
        assert torch.equal(value, resumed.state_tensors()[key]), key
    for key, value in straight.ema.shadow.items():
        assert torch.equal(value, resumed.ema.shadow[key]), key


needs_shipped = pytest.mark.skipif(not SHIPPED.is_dir(), reason="checkpoints/shapes-model is absent; train and copy it with "
                                   "`python -m backend.shapes.train --export-to checkpoints/shapes-model`")


@pytest.fixture(scope="module")
def shipped_readings():
    """Classifier readings of what the shipped model draws for its test captions: {factor: [(asked, read)]}."""
    from backend.shapes.captions import canonical_caption
    from backend.shapes.classify import load_classifier
    from backend.shapes.render import COLOURS, POSITIONS, SHAPES, Factors

    model = load_model(str(SHIPPED), device="cpu")
    colours = list(COLOURS)
    asked = [Factors(SHAPES[i % len(SHAPES)], c, "large", "center", "black") for i, c in enumerate(colours)]  # no held-out pair
    asked += [Factors("square", colours[i % len(colours)], "medium", p, "black") for i, p in enumerate(POSITIONS)]
    images = sample(model, [canonical_caption(a) for a in asked], seed=0, num_steps=20, guidance_scale=4.0).images
    read = load_classifier().predict(images)
    return {name: [(getattr(a, name), r[name]) for a, r in zip(asked, read)] for name in ("colour", "shape", "position")}


@needs_shipped
def test_shipped_model_draws_the_colours_and_shapes_it_is_asked_for(shipped_readings):
    for factor in ("colour", "shape"):
        pairs = shipped_readings[factor]
        assert sum(asked == read for asked, read in pairs) >= len(pairs) - 1, (factor, pairs)


@needs_shipped
def test_shipped_model_puts_objects_where_it_is_asked(shipped_readings):
    pairs = shipped_readings["position"]
    assert sum(asked == read for asked, read in pairs) >= len(pairs) - 2, pairs


def test_init_from_export_starts_at_its_weights_step_and_tokenizer(tmp_path, one_thread):
    tokenizer = build_tokenizer()
    tokenizer.add_tokens(["zebra"])  # an export's own vocabulary, which build_tokenizer() would not give
    weights = tiny_weights(tokenizer)
    export = save_export(weights, TINY, tokenizer, tmp_path / "export", step=2)
    config = TrainConfig(run_dir=str(tmp_path / "next"), init_from=str(export), batch_size=2, warmup_steps=4)
    trainer = Trainer(config, TINY, torch.device("cpu"))
    assert trainer.step == trainer.first_step == 2
    assert trainer.tokenizer.get_vocab() == tokenizer.get_vocab()
    for key, value in weights.items():  # the export is fp16: weights and EMA start at its rounding
        expected = value.half().float() if value.is_floating_point() else value
        assert torch.equal(trainer.state_tensors()[key], expected), key
        assert torch.equal(trainer.ema.shadow[key], expected), key
    trainer.train_step()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(config.lr / 4)  # a fresh optimizer warms up again
    trainer.save_checkpoint()
    shutil.rmtree(export)  # a resumed run needs only its own directory
    resumed = Trainer(dataclasses.replace(config, resume=True), TINY, torch.device("cpu"))
    resumed.load_checkpoint()
    assert (resumed.step, resumed.first_step) == (3, 2)
    resumed.train_step()
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(config.lr * 2 / 4)


def test_a_run_from_before_the_new_settings_resumes_as_it_was_trained(tmp_path):
    run = tmp_path / "run"
    config, _ = prepare_run(TrainConfig(run_dir=str(run)), TINY)
    stored = json.loads((run / "config.json").read_text())
    for name in ("init_from", "layout_share", "position_caption_share"):
        del stored["train"][name]
    (run / "config.json").write_text(json.dumps(stored))
    (run / "latest.json").write_text("{}")
    resumed, _ = prepare_run(TrainConfig(run_dir=str(run), resume=True), TINY)
    assert (resumed.layout_share, resumed.position_caption_share, resumed.init_from) == (0.0, 0.0, "")
    assert resumed.batch_size == config.batch_size


def test_init_from_refuses_weights_of_another_architecture(tmp_path):
    tokenizer = build_tokenizer()
    weights = tiny_weights(tokenizer)
    export = save_export(weights, TINY, tokenizer, tmp_path / "export", step=5)
    wider = ModelConfig(block_out_channels=(8, 16, 16, 32), attention_heads=2, text_hidden=16, text_layers=1, text_heads=2)
    with pytest.raises(ExplorerError, match="do not fit the model flags"):
        Trainer(TrainConfig(run_dir=str(tmp_path / "run"), init_from=str(export)), wider, torch.device("cpu"))
    with pytest.raises(ExplorerError, match="not a shapes-model export"):
        Trainer(TrainConfig(run_dir=str(tmp_path / "run2"), init_from=str(tmp_path)), TINY, torch.device("cpu"))


def test_layout_share_of_timesteps_comes_from_the_top_band(tmp_path):
    trainer = Trainer(TrainConfig(run_dir=str(tmp_path), layout_share=0.5, layout_band=100), TINY, torch.device("cpu"))
    t = trainer.timesteps(20_000, torch.Generator().manual_seed(0))
    top = (t >= 900).float().mean().item()
    assert top == pytest.approx(0.5 + 0.5 * 0.1, abs=0.015)  # the band itself plus uniform draws that land in it
    assert t.min() >= 0 and t.max() <= 999
    assert (t < 900).float().mean().item() == pytest.approx(0.45, abs=0.015)
