"""Feature icons: drawn by the build's icons stage, each what steering draws, resumable, checked when loaded."""

import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import backend.build as build_module
from backend.build import Build, BuildConfig
from backend.diffusion.collect import thumbnails
from backend.diffusion.steering import Steer
from backend.errors import ExplorerError
from backend.io import write_safetensors
from backend.serving.bundle import Bundle, rewrite_manifest
from backend.evaluation.icons import write_effects
from backend.serving.icons import DEFAULT_STRENGTHS, EFFECTS_FILE, ICON_FILE, IconSettings
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


def test_latents_that_never_fired_get_no_icon(tmp_path, built):
    config, model = icon_build(tmp_path, built), built[1]
    tables_path = tmp_path / "bundle" / "atlas" / "tables.safetensors"
    tables = load_file(tables_path)
    tables["typical"][[2, 5]] = 0.0  # as if latents 2 and 5 had never fired on the atlas images
    write_safetensors(tables_path, tables)
    rewrite_manifest(tmp_path / "bundle")
    Build(config, model=model).run()
    icons = Bundle.load(config.out).icons
    assert icons.drawn.tolist() == (Bundle.load(config.out).typical_activation > 0).tolist() and not icons.drawn[[2, 5]].any()
    assert not icons.images[[2, 5]].any() and icons.images[icons.drawn].flatten(1).any(1).all()


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


NUMBER_LISTS = st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2000, 2000), max_size=10).map(
    lambda values: ",".join(map(str, values)))


@given(NUMBER_LISTS | st.text(max_size=40), st.integers(-5, 5), st.sampled_from(["", "black background", "  ", "\t"]))
@settings(max_examples=300, deadline=None)
def test_icon_settings_from_any_text_parse_or_give_a_clear_error(strengths, seed, prompt):
    try:
        parsed = IconSettings.parse(prompt, seed, strengths)
    except ExplorerError as err:
        assert str(err).startswith(("Feature icons take", "Icon strengths must", "The icon seed", "The icon prompt"))
        return
    values = [float(a) for a in strengths.split(",") if a.strip()]
    assert parsed.strengths == tuple(values) and 1 <= len(values) <= 8 and all(0 < abs(a) <= 1000 for a in values)
    assert parsed.seed == seed >= 0 and parsed.prompt == prompt and prompt.strip() == prompt


@pytest.mark.parametrize("strengths, message", [("1,nan", "non-zero and within"), ("1,,x", "numbers separated by commas"),
                                                ("0", "non-zero"), (",".join(["1"] * 9), "1 to 8 strengths")])
def test_bad_icon_strengths_stop_the_build_before_it_starts(strengths, message, capsys):
    with pytest.raises(SystemExit):
        build_module.parse_config(["--model", "m", "--out", "o", "--icon-strengths", strengths])
    assert message in capsys.readouterr().err


def test_an_icon_prompt_the_model_cannot_read_stops_the_build_before_any_stage(tmp_path, built):
    config, model = icon_build(tmp_path, built), built[1]
    too_long = BuildConfig(**(vars(config) | dict(icon_prompt="red " * 40, stages="atlas,icons")))
    tables = (tmp_path / "bundle" / "atlas" / "tables.safetensors").read_bytes()
    with pytest.raises(ExplorerError, match="--icon-prompt: The prompt is .* tokens long"):
        Build(too_long, model=model).run()
    assert (tmp_path / "bundle" / "atlas" / "tables.safetensors").read_bytes() == tables  # the atlas stage never ran


def test_effect_labels_are_stored_with_the_icons_they_were_read_from_and_checked(tmp_path, built):
    config, model = icon_build(tmp_path, built), built[1]
    Build(config, model=model).run()
    bundle = Bundle.load(config.out)
    with pytest.raises(ExplorerError, match="no effect labels.*--write-effects"):
        bundle.effects
    effects = [None if not drawn else [{"factor": "colour", "value": "red"}] for drawn in bundle.icons.drawn.tolist()]
    write_effects(bundle, effects)
    assert Bundle.load(config.out).effects == effects
    assert Bundle.load(config.out).manifest["effects"]["strength"] == 3.0  # the icons are at 3 and -2: read from the one that adds
    (tmp_path / "bundle" / EFFECTS_FILE).write_text(json.dumps(effects[:-1]))
    rewrite_manifest(tmp_path / "bundle")
    with pytest.raises(ExplorerError, match=f"{EFFECTS_FILE} should list 16"):
        Bundle.load(config.out).effects
    write_effects(Bundle.load(config.out), effects)
    Build(BuildConfig(**(vars(config) | dict(icon_seed=1))), model=model).run()  # other icons: the effects describe the old ones
    with pytest.raises(ExplorerError, match="icons it no longer has"):
        Bundle.load(config.out).effects
