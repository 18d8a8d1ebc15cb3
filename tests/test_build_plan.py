"""A build's plan: sizes from configs alone, checked against SD 1.5's published sizes and a real tiny build."""

import pytest
import torch

import backend.build as build_module
from backend.build import Build, main
from backend.build_plan import SiteShape, site_shape
from backend.diffusion.collect import shard_info, shard_names
from backend.diffusion.models import load_model, model_sizes, save_model, unet_step_flops
from backend.diffusion.sampler import sample
from backend.errors import ExplorerError
from bench.sd15 import sd15_model
from tests.test_build import config
from tests.tiny_models import tiny_model

SD15_PARAMETERS = 859_520_964 + 123_060_480 + 83_653_863  # UNet, CLIP text encoder, VAE as published


@pytest.fixture(scope="module")
def sd15_configs(tmp_path_factory):
    """SD 1.5's layout with its configs and no weights (built on the meta device, which allocates nothing)."""
    root = tmp_path_factory.mktemp("sd15-configs")
    with torch.device("meta"):
        save_model(sd15_model(torch.device("meta"), torch.float32), root, weights=False)
    return root


def test_sd15_sizes_come_from_its_configs_without_weights(sd15_configs):
    unet_config, weight_bytes = model_sizes(str(sd15_configs), torch.float16)
    assert weight_bytes == 2 * SD15_PARAMETERS
    assert site_shape(unet_config, "up_ft1").grid == (32, 32) and site_shape(unet_config, "up_ft1").channels == 1280  # 512 px
    assert site_shape(unet_config, "up_ft1", latent_side=32).grid == (16, 16)  # 256 px
    assert site_shape(unet_config, "bottleneck") == SiteShape((8, 8), 1280) and site_shape(unet_config, "up_ft0").grid == (16, 16)
    assert site_shape(unet_config, "up_ft3").channels == 320 and site_shape(unet_config, "up_ft3").grid == (64, 64)


def test_sd15_unet_flops_match_its_published_multiply_adds(sd15_configs):
    """BK-SDM (Kim et al., 2023) gives SD v1's U-Net 339 G MACs per image at 512 px; the count here adds attention's own matmuls."""
    unet_config, _ = model_sizes(str(sd15_configs), torch.float32)
    per_image = unet_step_flops(unet_config, rows=2) / 2
    assert 2 * 339e9 <= per_image <= 1.25 * 2 * 339e9
    assert unet_step_flops(unet_config | {"sample_size": 32}, rows=1) < per_image / 3  # 256 px: a quarter of the positions


def test_plan_prints_the_needs_and_runs_nothing(sd15_configs, tmp_path, capsys):
    cfg = config(tmp_path, model=str(sd15_configs), recorded_steps=10, num_steps=25, n_latents=16384, device="cpu")
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in vars(cfg).items() if k in ("model", "out", "prompts", "num_steps",
                                                                                    "recorded_steps", "n_latents", "device")]
    main([*argv, "--plan"])
    printed = capsys.readouterr().out
    assert "32×32 grid" in printed and "SAE 12800 → 16384 latents" in printed and "rough collect time" in printed
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "bundle.work").exists()


def test_the_plan_matches_what_a_tiny_build_records_and_writes(tmp_path):
    model = tiny_model()
    build = Build(config(tmp_path, images_per_shard=4, recorded_steps=0), model=model)
    plan = build.plan()
    build.config.stages = "collect"
    build.run()
    info = shard_info(build.train_dir, shard_names(build.train_dir)[0])
    assert tuple(info["grid"]) == plan.site.grid
    written = sum(p.stat().st_size for p in build.train_dir.rglob("*.safetensors"))
    collect = next(stage for stage in plan.stages if stage.name == "collect")
    assert 0.7 * written <= collect.disk <= written  # the trajectories; thumbnails and headers are the rest


@pytest.mark.parametrize("limit", ["memory", "disk"])
def test_a_build_that_cannot_fit_refuses_before_any_work(tmp_path, monkeypatch, limit):
    build = Build(config(tmp_path, n_latents=64), model=tiny_model())
    stage_needs = {stage.name: stage.memory for stage in build.plan().stages}
    if limit == "memory":
        monkeypatch.setattr(build_module, "memory_available", lambda: stage_needs["train"] * 0.5)
        message = "memory"
    else:
        monkeypatch.setattr(build_module, "disk_free", lambda folder: 1000.0)
        message = "--positions-per-image"
    with pytest.raises(ExplorerError, match=message):
        build.run()
    assert not shard_names(build.train_dir) and not (tmp_path / "bundle" / "bundle.json").exists()


def test_the_rehearsal_model_directory_loads_as_a_checkpoint_would(tmp_path):
    """bench/sd15.py's layout (here at SD 1.5's tiny widths) loads through load_model and samples what it saved."""
    torch.manual_seed(0)
    original = sd15_model(torch.device("cpu"), torch.float32, tiny=True, latent_size=8)
    save_model(original, tmp_path)
    loaded = load_model(str(tmp_path), device="cpu")
    assert loaded.vae is not None and loaded.unet.config.sample_size == 8
    options = dict(seed=1, num_steps=2, guidance_scale=3.0)
    images = [sample(model, "a photograph of a horse", **options).images for model in (loaded, original)]
    assert torch.allclose(*images, atol=1e-5)  # loaded tensors may take other kernels: rounding differs in the last bits


def test_the_plan_counts_the_icons_stage_as_steered_runs(tmp_path):
    build = Build(config(tmp_path, icon_strengths="1,2"), model=tiny_model())
    plan, latents, prompts = build.plan(), build.config.n_latents, len(build.prompts)
    assert plan.icon_flops / plan.collect_flops == pytest.approx(2 * latents / prompts)  # one sampling run per icon
    icons = next(stage for stage in plan.stages if stage.name == "icons")
    assert icons.disk == 2 * latents * 64 * 64 * 3  # at most ICON_PX-sized uint8 images
    assert "rough icons time" in plan.table()
