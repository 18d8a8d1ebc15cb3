"""Feature icons: drawn by the build's icons stage, each what steering draws, resumable, checked when loaded."""

import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import backend.build as build_module
from backend.build import Build, BuildConfig
from backend.diffusion.collect import thumbnails
from backend.diffusion.steering import Steer
from backend.errors import ExplorerError
from backend.io import write_safetensors
from backend.serving.bundle import Bundle, rewrite_manifest
from backend.serving.icons import DEFAULT_STRENGTHS, ICON_FILE, IconSettings
from tests.conftest import PROMPTS
from tests.tiny_models import tiny_model


def test_every_live_latent_has_an_icon_per_strength_and_dead_ones_none(tiny_bundle):
    icons = tiny_bundle.icons
    assert icons.settings == IconSettings("", 0, DEFAULT_STRENGTHS)  # the build's defaults: the unconditional image
    assert icons.images.shape == (tiny_bundle.n_latents, len(DEFAULT_STRENGTHS), *tiny_bundle.thumbnails.shape[1:])
    assert torch.equal(icons.drawn, tiny_bundle.typical_activation > 0)
    assert not icons.images[~icons.drawn].any()
    drawn = icons.images[icons.drawn]
    assert (drawn != icons.base).flatten(2).any(2).all()  # every drawn icon differs from the unsteered image


def test_an_icon_is_what_steering_the_neutral_prompt_draws(tiny_bundle):
    icons, size = tiny_bundle.icons, tiny_bundle.thumbnails.shape[1]
    j = int(icons.drawn.nonzero()[0])
    for s, strength in enumerate(icons.settings.strengths):
        steered = tiny_bundle.generator.generate("", 0, [Steer(j, strength)], allow_empty=True).steered_images
        expected = thumbnails(steered, size)[0].int()
        assert (icons.images[j, s].int() - expected).abs().max() <= 2  # batched with other runs: float rounding only
    base = tiny_bundle.generator.base("", 0, allow_empty=True).result.images
    assert torch.equal(icons.base, thumbnails(base, size)[0])


def test_users_still_cannot_generate_from_an_empty_prompt(tiny_bundle):
    with pytest.raises(ExplorerError, match="empty"):
        tiny_bundle.generate("", 0, [Steer(0, 1.0)])
    with pytest.raises(ExplorerError, match="empty"):
        tiny_bundle.generator.check_prompts(["  "], allow_empty=True)  # only "" is the unconditional prompt


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny bundle through the index stage, without icons, and its build config."""
    root = tmp_path_factory.mktemp("icon-build")
    (root / "prompts.txt").write_text("\n".join(PROMPTS))
    config = BuildConfig(model="tiny", out=str(root / "bundle"), prompts=str(root / "prompts.txt"), num_steps=4, recorded_steps=2,
                         n_latents=16, k=4, epochs=1, sae_batch_size=128, top_n=4, stages="collect,dynamics,train,atlas,index",
                         icon_prompt="a red circle", icon_strengths="3,-2")
    model = tiny_model()
    Build(config, model=model).run()
    return config, model


def icon_build(tmp_path, built) -> BuildConfig:
    """A copy of the built bundle and its work directory, with a config that runs the icons stage on them."""
    config, _ = built
    shutil.copytree(config.out, tmp_path / "bundle")
    shutil.copytree(config.work, tmp_path / "bundle.work")
    return BuildConfig(**(vars(config) | dict(out=str(tmp_path / "bundle"), work_dir="", stages="icons")))


def test_an_interrupted_icons_stage_resumes_at_its_first_missing_chunk(tmp_path, built, monkeypatch):
    config, model = icon_build(tmp_path, built), built[1]
    monkeypatch.setattr(build_module, "ICON_CHUNK", 4)
    drawn_chunks, real_draw = [], build_module.draw_icons

    def draw_then_stop(generator, settings, latents, size):
        if len(drawn_chunks) == 2:
            raise KeyboardInterrupt
        drawn_chunks.append(list(latents))
        return real_draw(generator, settings, latents, size)

    monkeypatch.setattr(build_module, "draw_icons", draw_then_stop)
    with pytest.raises(KeyboardInterrupt):
        Build(config, model=model).run()
    assert not Bundle.load(config.out).has_icons
    first_two = list(drawn_chunks)
    drawn_chunks.clear()
    monkeypatch.setattr(build_module, "draw_icons", lambda *args: drawn_chunks.append(list(args[2])) or real_draw(*args))
    summary = Build(config, model=model).run()
    bundle = Bundle.load(config.out)
    live = bundle.typical_activation.gt(0).nonzero().flatten().tolist()
    assert first_two + drawn_chunks == [live[i : i + 4] for i in range(0, len(live), 4)]  # no chunk drawn twice
    assert summary["icons"] == 2 * len(live) and bundle.icons.settings == IconSettings("a red circle", 0, (3.0, -2.0))
    assert not list(bundle.root.parent.glob("bundle.work/icons-*"))  # the chunks go once the icons are in the bundle


def test_icons_of_an_earlier_atlas_are_refused(tmp_path, built):
    config, model = icon_build(tmp_path, built), built[1]
    Build(config, model=model).run()
    assert Bundle.load(config.out).has_icons
    Build(BuildConfig(**(vars(config) | dict(stages="atlas", top_n=3))), model=model).run()  # new typical activations
    with pytest.raises(ExplorerError, match="before its atlas was rebuilt.*--stages icons"):
        Bundle.load(config.out).icons


def test_a_bundle_without_icons_says_how_to_draw_them(built):
    with pytest.raises(ExplorerError, match="no feature icons.*--stages icons"):
        Bundle.load(built[0].out).icons


@pytest.mark.parametrize("tensors", [
    {"icons": torch.zeros(16, 3, 16, 16, 3, dtype=torch.uint8)},  # three strengths where the manifest has two
    {"icons": torch.zeros(16, 2, 16, 16, 3)},  # float, not uint8
    {"drawn": torch.ones(15, dtype=torch.bool)},
    {"base": torch.zeros(8, 8, 3, dtype=torch.uint8)},  # not the icons' size
])
def test_icons_of_the_wrong_shape_or_type_are_refused_with_the_file_name(tmp_path, built, tensors):
    config, model = icon_build(tmp_path, built), built[1]
    Build(config, model=model).run()
    good = Bundle.load(config.out).icons
    write_safetensors(tmp_path / "bundle" / ICON_FILE, {"icons": good.images, "base": good.base, "drawn": good.drawn} | tensors)
    rewrite_manifest(tmp_path / "bundle")
    with pytest.raises(ExplorerError, match=ICON_FILE):
        Bundle.load(config.out).icons


def test_the_manifest_icons_entry_is_checked_when_the_bundle_loads(tmp_path, built):
    config, model = icon_build(tmp_path, built), built[1]
    Build(config, model=model).run()
    path = tmp_path / "bundle" / "bundle.json"
    manifest = json.loads(path.read_text())
    for bad in ({"strengths": []}, {"seed": -1}, {"atlas_sha256": "abc"}):
        path.write_text(json.dumps(manifest | {"icons": manifest["icons"] | bad}))
        with pytest.raises(ExplorerError, match="icons"):
            Bundle.load(config.out)


@given(st.text(max_size=40), st.integers(-5, 5))
@settings(max_examples=200, deadline=None)
def test_icon_settings_from_any_text_parse_or_give_a_clear_error(strengths, seed):
    try:
        parsed = IconSettings.parse("", seed, strengths)
    except ExplorerError:
        return
    assert parsed.seed >= 0 and 1 <= len(parsed.strengths) <= 8
    assert all(0 < abs(a) <= 1000 and a == a for a in parsed.strengths)


def test_bad_icon_strengths_stop_the_build_before_it_starts():
    with pytest.raises(SystemExit):
        build_module.parse_config(["--model", "m", "--out", "o", "--icon-strengths", "1,nan"])
