import atexit
import functools
import json
import math
import pickle
import shutil
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pytest
import torch
from PIL import Image

from backend.build import Build, BuildConfig
from backend.errors import ExplorerError
from backend.serving.bundle import Bundle
from backend.serving.edits import LADDER, EditInfo
from backend.serving.icons import IconSettings
from tests.tiny_models import tiny_model
from ui import browse, edit, find, inspect, status, steer, timeline, views, your_image
from ui.explorer import Explorer, open_explorer
from ui.icons import IconCells
from ui.image_files import ImageFiles
from ui.page_files import PageFiles
from ui.images import overlay, tint, upscale
from ui.latents import HEADERS, LatentTable, effect_columns
from ui.state import MAX_ALPHA, ViewState, alpha_from_position, parse_query, position_from_alpha
from ui.timeline import timelines

COLOURS, SHAPES = ("red", "green", "blue"), ("circle", "square", "star")
PROMPTS = [f"a {c} {s}" for c in COLOURS for s in SHAPES]
NO_STEER = ("", 0.0, "add") * 2


@functools.cache
def ui_bundle_dir() -> Path:
    """A tiny labelled bundle (colour and shape factors), built once per test session."""
    root = Path(tempfile.mkdtemp(prefix="ui-bundle-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    (root / "prompts.txt").write_text("\n".join(PROMPTS))
    config = BuildConfig(model="tiny", out=str(root / "bundle"), prompts=str(root / "prompts.txt"), num_steps=6,
                         recorded_steps=3, n_latents=32, k=4, epochs=1, sae_batch_size=128, top_n=4, images_per_shard=9)
    build = Build(config, model=tiny_model())
    build.factors = [{"colour": c, "shape": s} for c in COLOURS for s in SHAPES]
    with one_thread():
        build.run()
    return root / "bundle"


class one_thread:
    """Tiny models run fastest on one thread; on a shared CPU more threads only contend (a 100x slowdown seen)."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def tiny_explorer() -> Explorer:
    """An Explorer on the tiny bundle with its tiny model attached."""
    bundle = Bundle.load(ui_bundle_dir())
    bundle.attach_model(tiny_model())
    return Explorer(bundle)


def explorer_and_pages() -> tuple[Explorer, PageFiles]:
    """`tiny_explorer()` and the folder its latent pages are served from (under this test session's SAE_PAGE_CACHE)."""
    ex = tiny_explorer()
    return ex, PageFiles.of(ex.bundle)


@pytest.fixture(scope="module")
def ex():
    with one_thread():
        yield tiny_explorer()


def labelled_latent(ex) -> int:
    return next(j for j, label in enumerate(ex.table.labels) if label and ex.table.max_activation[j] > 0)


def test_search_by_id_returns_that_latent(ex):
    rows, summary = browse.search(ex, "7")
    assert [r[0] for r in rows] == [7] and summary.startswith("1 of 32")


def test_search_by_label_words_returns_only_matching_latents(ex):
    rows, _ = browse.search(ex, "red")
    assert rows and all("red" in row[1] for row in rows)
    assert {r[0] for r in rows} == set(ex.bundle.search_latents("red"))


def test_the_default_order_leads_with_precise_localized_latents_and_the_app_opens_on_the_first(ex, monkeypatch):
    rng = np.random.default_rng(0)
    planted = replace(ex.table, precision=rng.choice([0.3, 0.8, 0.95, 1.0], 32), image_share=rng.choice([0.005, 0.5], 32),
                      frequency=rng.permutation(32) / 100, kinds=[("local", "local", "image-wide", "global")[j % 4] for j in range(32)])
    monkeypatch.setattr(ex, "table", planted)
    rows, _ = browse.search(ex, "")
    leads = [j for j in range(32) if planted.kinds[j] == "local" and planted.image_share[j] >= 0.01 and planted.precision[j] >= 0.8]
    rest = [j for j in range(32) if j not in leads]
    expected = sorted(leads, key=lambda j: -planted.frequency[j]) + sorted(rest, key=lambda j: (-planted.precision[j], -planted.frequency[j]))
    assert 2 <= len(leads) < 32 and [r[0] for r in rows] == expected
    assert views.default_latent(ex) == expected[0] and views.restore(ex, {})[1] == expected[0]
    precision = HEADERS.index("precision")
    assert [r[precision] for r in rows] == [round(float(planted.precision[j]), 2) for j in expected]


def test_a_latent_page_says_how_widely_its_latent_fires_and_how_precise_its_label_is(ex, monkeypatch):
    table = ex.table
    planted = replace(table, kinds=["image-wide"] + table.kinds[1:], spread=np.r_[0.43, table.spread[1:]],
                      image_share=np.r_[1.0, table.image_share[1:]], precision=np.r_[0.28, table.precision[1:]])
    monkeypatch.setattr(ex, "table", planted)
    monkeypatch.setattr(ex.bundle, "labels", [{"factor": "background", "value": "gray", "purity": 0.86, "support": 16}] + ex.bundle.labels[1:])
    page = browse.header(ex, 0)
    assert "**image-wide**: fires on 43% of the positions of each image it fires on (more than a quarter), on 100% of the atlas images" in page
    assert "precision 0.28: of its activation over all atlas images, the share on images whose background is gray" in page
    j = next(j for j in range(1, 32) if table.kinds[j] == "local" and table.max_activation[j] > 0)
    assert f"{table.spread[j]:.0%} of each image it fires on, on {table.image_share[j]:.0%} of the atlas images" in browse.header(ex, j)
    assert planted.row(0)[HEADERS.index("kind")] == "image-wide" and browse.latent_page(ex, 0).top_images  # still mapped


def test_an_image_wide_latent_that_is_one_side_of_a_signed_pair_says_so(ex, monkeypatch):
    """A dense direction coded by two latents of opposite decoders (the shipped bundle's 217 and 279): found by the
    decoder's cosines, checked against numpy's, and named in the table and on both pages."""
    bundle = ex.bundle
    decoder = bundle.sae.W_dec.detach().clone()
    decoder[:, 5] = -1.5 * decoder[:, 3] + 0.01 * torch.randn(decoder.shape[0], generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(bundle.sae, "W_dec", torch.nn.Parameter(decoder))
    monkeypatch.setattr(bundle, "image_spread", torch.full((bundle.n_latents,), 0.1).index_fill(0, torch.tensor([3]), 0.45))
    unit = decoder.double().numpy() / np.linalg.norm(decoder.double().numpy(), axis=0)
    cosines = unit.T @ unit
    found = bundle.opposite_latents(list(range(bundle.n_latents)))
    assert [other for other, _ in found] == cosines.argmin(1).tolist()
    assert np.allclose([cosine for _, cosine in found], cosines.min(1), atol=1e-5) and found[3][1] < -0.99
    with pytest.raises(ExplorerError, match="does not exist"):
        bundle.opposite_latents([3, bundle.n_latents])
    assert bundle.opposite_latents(list(range(bundle.n_latents)), chunk_size=5) == pytest.approx(found) and bundle.opposite_latents([]) == []
    table = LatentTable.of(bundle)
    assert set(table.signed_pairs) == {3, 5} and table.signed_pairs[3][0] == 5 and table.signed_pairs[5][0] == 3
    assert table.row(3)[HEADERS.index("kind")] == "image-wide, ± pair with 5"
    assert table.row(5)[HEADERS.index("kind")] == "local, ± pair with 3" == table.kind(5) and table.kind(4) == table.kinds[4]
    monkeypatch.setattr(ex, "table", table)
    assert f"**One side of a signed pair** with latent 5: their decoder directions point opposite ways (cosine {found[3][1]:.2f})" in browse.header(ex, 3)
    assert "with latent 3" in browse.header(ex, 5) and "signed pair" not in browse.header(ex, 4)


def test_a_signed_pair_is_mutual():
    """Latent 0's most opposite is 1, but 1's is 2: no pair; 2 and 1 are each other's: a pair, though only 2 was asked."""
    opposite = {0: (1, -0.95), 1: (2, -0.97), 2: (1, -0.97)}
    bundle = SimpleNamespace(opposite_latents=lambda ids: [opposite[j] for j in ids])
    assert Bundle.signed_pairs(bundle, [0]) == {} and Bundle.signed_pairs(bundle, [2]) == {2: (1, -0.97), 1: (2, -0.97)}
    not_opposite_enough = SimpleNamespace(opposite_latents=lambda ids: [(1 - j, -0.5) for j in ids])
    assert Bundle.signed_pairs(not_opposite_enough, [0]) == {}


@pytest.mark.parametrize("sort, column, reverse", [("max activation", "max", True), ("purity", "purity", True), ("peak step", "peak", False),
                                                   ("latent id", "latent", False), ("frequency", "freq.", True),
                                                   ("label precision", "precision", True)])
def test_sorts_order_the_list(ex, sort, column, reverse):
    values = [r[HEADERS.index(column)] for r in browse.search(ex, "", sort)[0]]
    assert values == sorted(values, reverse=reverse)


def test_the_table_and_the_page_say_whether_a_latents_effect_agrees_with_its_label(ex, monkeypatch):
    labels = [{"factor": "colour", "value": "red", "purity": 1.0}, {"factor": "colour", "value": "red", "purity": 1.0}, {}]
    effects = [[{"factor": "colour", "value": "red"}, {"factor": "size", "value": "large"}], [{"factor": "size", "value": "small"}], []]
    planted = SimpleNamespace(effects=effects, labels=labels, n_latents=3)
    columns = effect_columns(planted)
    assert columns == {"effects": ["colour red, size large", "size small", "no visible change"], "agreement": [True, False, None]}
    monkeypatch.setattr(ex, "table", replace(ex.table, effects=columns["effects"] + [""] * 29, agreement=columns["agreement"] + [None] * 29))
    monkeypatch.setitem(ex.bundle.manifest, "effects", {"strength": 4.0})
    effect = HEADERS.index("effect")
    assert [ex.table.row(j)[effect] for j in (0, 1, 2, 3)] == ["colour red, size large", "size small (not its label)", "no visible change", ""]
    assert "(α = 4) shows **size small** — not its label's value" in browse.effect_line(ex, 1)
    assert browse.effect_line(ex, 0).endswith("shows **colour red, size large** — its label's value") and browse.effect_line(ex, 3) == ""


def test_a_bundle_without_effect_labels_has_an_empty_effect_column(ex):
    assert effect_columns(ex.bundle) == {"effects": [""] * 32, "agreement": [None] * 32}


def test_filters_keep_labelled_and_frequent_latents(ex):
    rows, _ = browse.search(ex, "", "frequency", labelled_only=True, min_frequency=0.1)
    assert rows and all(r[1] and r[HEADERS.index("freq.")] >= 0.1 for r in rows)


@pytest.mark.parametrize("bad", [dict(query="x" * 201), dict(sort="colour"), dict(min_frequency=2.0)])
def test_bad_search_requests_are_explained(ex, bad):
    with pytest.raises(ExplorerError):
        browse.search(ex, **bad)


def test_latent_page_shows_the_atlas_view_of_the_latent(ex):
    j = labelled_latent(ex)
    page = browse.latent_page(ex, j)
    assert page.latent == j and f"Latent {j}" in page.header and ex.table.labels[j] in page.header
    assert len(page.top_images) == len(ex.bundle.top_images(j, browse.TOP_N)) > 0
    assert page.top_images[0][0].size == (192, 192)  # 16 px atlas images upscaled, nearest
    assert len(page.top_patches) == len(ex.bundle.top_patches(j, browse.TOP_N))
    assert sum(page.histogram.data[0].y) == int(ex.bundle.atlas["histogram"][j].sum())
    assert list(page.profile.data[0].x) == ex.recorded_steps
    profiles, typical = ex.bundle.temporal_profiles, float(ex.bundle.typical_activation[j])
    assert page.profile.data[0].y == pytest.approx((typical * profiles.trajectory[j]).tolist(), rel=1e-6)
    assert page.profile.data[1].y == pytest.approx((typical * profiles.injected[j]).tolist(), rel=1e-6)
    assert "RMS ‖a_t‖" in page.profile.layout.yaxis.title.text
    assert ex.table.peak_step[j] == ex.recorded_steps[int(profiles.trajectory[j].argmax())]
    assert page.similar and all(row[0] != j for row in page.similar)
    assert len(page.quantile_images) == len(ex.bundle.quantile_images(j, browse.QUANTILE_BINS, browse.PER_BIN)) > 0
    assert page.quantile_images[0][1].startswith("q 0–25 %") and page.quantile_images[-1][1].startswith("q 75–100 %")
    assert len(page.outputs()) == 10


def test_the_latent_page_shows_its_icons_beside_the_unsteered_image(ex):
    j = labelled_latent(ex)
    page, icons = browse.latent_page(ex, j), ex.bundle.icons
    assert [caption for _, caption in page.icons] == ["nothing added", "α = +1 × s", "α = +2 × s", "α = +4 × s"]
    for (picture, _), icon in zip(page.icons, [icons.base, *icons.images[j]]):
        assert np.array_equal(np.asarray(picture)[::12, ::12], icon.numpy())  # 16 px icons upscaled 12x, nearest
    assert "the empty prompt (seed 0)" in page.icon_note and f"latent {j} added" in page.icon_note
    assert "Steer tab" not in page.icon_note  # the Steer tab refuses the empty prompt: it cannot draw these


def test_the_icon_note_says_what_the_icons_are_and_what_the_steer_tab_can_redraw(ex):
    j, icons = labelled_latent(ex), ex.icons
    try:
        ex.icons = replace(icons, settings=IconSettings("a red circle", 3, (1.0, 2.0, 4.0)))
        assert browse.latent_page(ex, j).icon_note.endswith("the Steer tab draws the same.")
        ex.icons = replace(icons, settings=IconSettings("a red circle", 3, (1.0, 2.0, 400.0)))  # beyond the sliders' ±50
        assert "Steer tab" not in browse.latent_page(ex, j).icon_note
        ex.icons = replace(icons, drawn=icons.drawn.clone().fill_(False))
        page = browse.latent_page(ex, j)
        assert page.icons == [] and f"Latent {j} never fired" in page.icon_note and "no icon" in page.icon_note
    finally:
        ex.icons = icons


def test_each_table_row_shows_its_latents_icon_strip_after_the_id(ex, tmp_path):
    rows, _ = browse.table(ex, IconCells(ex, tmp_path), "red")
    assert browse.table_headers(ex)[:2] == ["latent", "icons"] and len(rows[0]) == len(browse.table_headers(ex))
    for row in rows:
        path = row[1].split("gradio_api/file=")[1].rstrip(")")
        strip = np.asarray(Image.open(path))
        icons = ex.bundle.icons.images[row[0]].numpy()
        assert np.array_equal(strip, np.concatenate(list(icons), axis=1))  # strengths left to right, pixels as drawn
    assert [row[:1] + row[2:] for row in rows] == browse.search(ex, "red")[0]


def test_a_bundle_with_unusable_icons_still_serves_and_says_why(tmp_path):
    bundle_dir = shutil.copytree(ui_bundle_dir(), tmp_path / "bundle")
    manifest = json.loads((bundle_dir / "bundle.json").read_text())
    manifest["icons"]["atlas_sha256"] = "0" * 64  # drawn with another atlas
    (bundle_dir / "bundle.json").write_text(json.dumps(manifest))
    stale = Explorer(Bundle.load(bundle_dir))
    assert stale.icons is None and "--stages icons" in stale.icon_note
    assert browse.latent_page(stale, 3).icon_note == stale.icon_note and "icons" not in browse.table_headers(stale)
    assert browse.table(stale, IconCells(stale, tmp_path / "files"))[0] == browse.search(stale)[0]


@pytest.mark.parametrize("bad", [-1, 32, 10**12, "abc", None, 1.5, math.nan, "3; drop"])
def test_bad_latent_ids_are_explained(ex, bad):
    with pytest.raises(ExplorerError, match="[Ll]atent"):
        browse.latent_page(ex, bad)


def test_latent_ids_from_text_and_float_boxes_are_accepted(ex):
    assert browse.latent_page(ex, "4").latent == browse.latent_page(ex, 4.0).latent == 4


def test_maps_over_time_have_one_frame_per_recorded_step(ex):
    line, last, x0, final, caption = browse.timeline_view(ex, labelled_latent(ex))
    assert len(line.frames) == len(ex.recorded_steps) and last == len(line.frames) - 1
    assert Image.open(x0).size == Image.open(final).size and "sampler step 5" in caption
    assert timeline.frame(line, 0)[2].startswith(line.title)
    assert timeline.next_index(line, last) == 0 and timeline.next_index(line, 0) == 1
    with pytest.raises(ExplorerError):
        timeline.frame(line, 99)


def steer_call(ex, prompt="a red circle", seed=0, guidance=4.0, start=0, end=5, mask="everywhere", cells=(), history=(), slot=(3, 0.5, "add")):
    return steer.steer(ex, prompt, seed, guidance, start, end, mask, list(cells), list(history), *slot, *NO_STEER)


def test_steering_shows_base_steered_difference_and_history(ex):
    *pictures, history, text = steer_call(ex)
    base, steered, diff = map(Image.open, pictures)  # files in the folder of results' pictures: a session keeps their paths
    assert all(Path(p).parent == ex.pictures.root for p in pictures)
    assert base.size == steered.size == diff.size
    assert np.abs(np.asarray(base, float) - np.asarray(steered, float)).sum() > 0
    assert len(history) == 1 and "latent 3: add" in text
    _, _, _, history, text = steer_call(ex, mask="region", cells=["top left", "center"], history=history, slot=(3, 0.0, "ablate"))
    assert len(history) == 2 and "ablated" in text


def test_a_session_keeps_paths_and_a_picture_dropped_to_make_room_is_a_clear_message(ex):
    line = browse.timeline_view(ex, labelled_latent(ex))[0]
    assert all(isinstance(p, str) and Path(p).is_file() for frame in line.frames for p in frame)
    assert len(pickle.dumps(line)) < 20_000  # paths, not 2 × steps pictures
    _, steered, _, history, _ = steer_call(ex)
    Path(line.frames[0][0]).unlink()
    Path(steered).unlink()
    with pytest.raises(ExplorerError, match="no longer kept"):
        timeline.frame(line, 0)
    with pytest.raises(ExplorerError, match="no longer kept"):
        steer.pin(history)
    assert timeline.frame(line, 1)[0] == line.frames[1][0]  # the others are still there
    ex.timelines = type(ex.timelines)(ex.timelines.budget)  # the next map over time writes its pictures again
    assert Path(browse.timeline_view(ex, labelled_latent(ex))[0].frames[0][0]).is_file()


def test_a_pinned_result_is_the_last_steered_image_with_what_made_it(ex):
    with pytest.raises(ExplorerError, match="Nothing to pin"):
        steer.pin([])
    _, steered, _, history, _ = steer_call(ex, start=2, end=4, mask="region", cells=["center", "top left"])
    image, caption = steer.pin(history)
    assert image == history[0][0] == steered and Path(image).parent == ex.pictures.root
    alpha = alpha_from_position(0.5)
    assert caption == f"**Pinned**: a red circle · seed 0 · guidance 4 · latent 3: add α = {alpha:+.2f} × s · steps 2–4 · region (top left, center)"
    _, _, _, history, _ = steer_call(ex, history=history, slot=(5, 0.5, "add"))  # the next result leaves the pin as it was
    assert steer.pin(history[1:]) == (image, caption)


def test_scale_by_one_leaves_the_image_unchanged(ex):
    base, steered, diff, _, _ = steer_call(ex, slot=(3, position_from_alpha(1.0), "scale"))
    assert np.asarray(Image.open(diff)).max() <= 4 * 1  # rounding of α only


@pytest.mark.parametrize("bad", [
    dict(slot=(3, math.nan, "add")), dict(slot=(3, 1e9, "add")), dict(slot=(3, 0.5, "multiply")), dict(slot=(99, 0.5, "add")),
    dict(prompt=""), dict(prompt="   "), dict(prompt="a red circle " * 50), dict(prompt="a red circle on the top left of a blue square star"),
    dict(start=5, end=1), dict(mask="region"), dict(mask="somewhere"), dict(seed=-1), dict(seed=math.nan), dict(guidance=math.nan),
])
def test_bad_steering_requests_are_explained_and_change_nothing(ex, bad):
    cache = ex.bundle.generator.base_runs.keys()
    history = [("earlier", "kept")]
    with pytest.raises(ExplorerError):
        steer_call(ex, **bad | {"history": history})
    assert history == [("earlier", "kept")] and ex.bundle.generator.base_runs.keys() == cache


def edit_call(ex, prompt="a green circle", seed=3, guidance=4.0, start=0, end=5, target="colour=red", target_ids="", use_found=False,
              found=None, source=edit.NONE, source_ids="", where="auto", strength=edit.DEFAULT_STRENGTH, automatic=True):
    return edit.edit(ex, prompt, seed, guidance, start, end, target, target_ids, use_found, found, source, source_ids, where,
                     strength, automatic)


def test_the_edit_panel_offers_every_label_value_as_a_concept(ex):
    values = {(label["factor"], label["value"]) for label in ex.bundle.labels if label.get("factor")}
    choices = edit.label_choices(ex)
    assert choices == sorted(f"{factor}={value}" for factor, value in values) and "colour=red" in choices
    assert all(ex.bundle.concept(choice).name == choice for choice in choices)


def test_an_edit_shows_base_edited_and_the_edited_positions(ex):
    base, edited, positions, caption, strength, automatic, made = edit_call(ex, source="colour=green")
    direct = ex.bundle.edit("a green circle", 3, "colour=red", "colour=green", window=(0, 5), guidance_scale=4.0)
    info = direct.edit
    assert base.size == edited.size == positions.size == (192, 192)
    assert np.array_equal(np.asarray(base), np.asarray(upscale(direct.base)))
    assert np.array_equal(np.asarray(positions), np.asarray(tint(direct.base, info.positions)))  # the same positions, drawn
    assert automatic and info.automatic and strength == info.strength in LADDER
    assert caption.startswith("**colour=green → colour=red** (") and f" swapped for {len(ex.bundle.concept('colour=red').latents)})" in caption
    assert f"{int(info.positions.sum())} of 64 positions" in caption and "(auto)" in caption
    assert made == {"edit_target": "colour=red", "edit_source": "colour=green", "edit_where": "auto", "edit_strength": None}


def test_typed_ids_override_the_list_and_a_strength_set_by_hand_runs_once(ex):
    _, edited, _, caption, strength, automatic, made = edit_call(ex, target_ids=" 3, 5 ", where="everywhere", strength=6, automatic=False)
    direct = ex.bundle.edit("a green circle", 3, "3, 5", strength=6.0, window=(0, 5), where="all", guidance_scale=4.0)
    assert np.abs(np.asarray(edited, float) - np.asarray(upscale(direct.steered), float)).max() <= 1  # float rounding only
    assert caption == ("**→ latents 3, 5** (2 latents added) · strength 6 × s, set by hand (only an automatic strength is checked "
                       "against the codes) · everywhere: 64 of 64 positions")
    assert (strength, automatic) == (6.0, False)
    assert made == {"edit_target": "3, 5", "edit_source": None, "edit_where": "all", "edit_strength": 6.0}


def test_the_latest_find_result_can_be_the_edit_target(ex):
    _, _, found = find.find_latents(ex, "a red circle\na red star", "a blue circle\na blue star", 1)
    concept = ex.bundle.concept(found)  # positive differences, weighted by them
    _, _, _, caption, _, _, made = edit_call(ex, target=None, use_found=True, found=found, where="where it fired")
    assert caption.startswith(f"**→ {concept.name}** ({len(concept.latents)} latents added)")
    assert f"where {concept.name} fired" in caption
    assert made["edit_target"] == ", ".join(map(str, concept.latents))  # a link carries the found latents as ids
    with pytest.raises(ExplorerError, match="No Find result yet"):
        edit_call(ex, use_found=True, found=None)


def test_the_caption_says_whether_the_codes_read_the_target(ex):
    red, green = ex.bundle.concept("colour=red"), ex.bundle.concept("colour=green")
    positions = torch.zeros(8, 8)
    positions[2:4, 2:5] = 1
    info = EditInfo(target=red, source=green, removed=green, strength=15.0, automatic=True, reached=False, where="fired",
                    positions=positions)
    assert "did not reach colour=red even at strength 15 (the largest tried)" in edit.describe(info, "where it fired")
    assert edit.describe(info, "where it fired").endswith("where colour=green fired: 6 of 64 positions")
    reached = replace(info, source=None, strength=4.5, reached=True, where="background")
    assert edit.describe(reached, "auto") == (f"**→ colour=red** ({len(red.latents)} latents in place of {len(green.latents)} latents of "
                                               "other colour values) · strength 4.5 × s, chosen automatically · the edited run's codes "
                                               "read colour=red · on the background (auto): 6 of 64 positions")
    added = replace(reached, removed=None)
    assert edit.describe(added, "auto").startswith(f"**→ colour=red** ({len(red.latents)} latents added) · ")


@pytest.mark.parametrize("bad, message", [
    (dict(prompt=""), "empty"), (dict(prompt="   "), "empty"), (dict(prompt="a red circle " * 50), "characters"),
    (dict(prompt="a red circle on the top left of a blue square star"), "tokens"),
    (dict(target="colour=pink"), "values of colour"), (dict(target_ids="99"), "does not exist"), (dict(target_ids="3, x"), "Cannot read"),
    (dict(source_ids="-1"), "Cannot read"), (dict(target=None), "Choose a target"), (dict(target=edit.NONE), "Choose a target"),
    (dict(target=3), "got int"), (dict(target_ids="1 " * 600), "at most 1000"), (dict(use_found=True), "No Find result"),
    (dict(strength=math.nan, automatic=False), "between 0 and 30"), (dict(strength=1e9, automatic=False), "between 0 and 30"),
    (dict(strength=-1, automatic=False), "between 0 and 30"), (dict(strength="6", automatic=False), "between 0 and 30"),
    (dict(where="inside"), "Where to edit"), (dict(where="all"), "Where to edit"), (dict(automatic="yes"), "true or false"),
    (dict(seed=-1), "Seed"), (dict(start=5, end=1), "window"), (dict(guidance=math.nan), "Guidance"),
])
def test_bad_edit_requests_are_explained_and_change_nothing(ex, bad, message):
    cache = ex.bundle.generator.base_runs.keys()
    with pytest.raises(ExplorerError, match=message):
        edit_call(ex, **bad)
    assert ex.bundle.generator.base_runs.keys() == cache


def test_an_edit_link_restores_the_panel_and_the_same_edit(ex):
    *_, made = edit_call(ex, source="colour=green")
    query = views.link("steer", 3, "", 0.0, "add", "a green circle", 3, made)
    assert "edit_target=colour%3Dred&edit_source=colour%3Dgreen&edit_where=auto" in query and "edit_strength" not in query
    restored = views.restore_edit(ex, dict(parse_qsl(query[1:])))
    assert restored == ("colour=red", "", "colour=green", "", "auto", edit.DEFAULT_STRENGTH, True, made)
    target, target_ids, source, source_ids, where, strength, automatic, _ = restored
    assert edit_call(ex, target=target, target_ids=target_ids, source=source, source_ids=source_ids, where=where, strength=strength,
                     automatic=automatic)[-1] == made
    typed = {"tab": "steer", "edit_target": "3, 5", "edit_where": "fired", "edit_strength": "6"}
    assert views.restore_edit(ex, typed)[:7] == (None, "3, 5", edit.NONE, "", "where it fired", 6.0, False)
    for no_edit in ({}, {"tab": "steer", "latent": "4"}, {"tab": "browse", "edit_target": "colour=red"}):
        assert views.restore_edit(ex, no_edit) == (None, "", edit.NONE, "", "auto", edit.DEFAULT_STRENGTH, True, None)
    with pytest.raises(ExplorerError, match="values of colour"):
        views.restore_edit(ex, {"tab": "steer", "edit_target": "colour=pink"})


def test_inspecting_a_prompt_lists_its_most_active_latents_then_maps_its_top_labels(ex):
    result = inspect.inspect_prompt(ex, "a blue star", 3)
    sums = [row[2] for row in result.rows]
    assert result.rows and sums == sorted(sums, reverse=True) and [row[4] for row in result.rows] == [ex.table.kind(row[0]) for row in result.rows]
    total = ex.generator().base("a blue star", 3).codes.float().numpy().sum(0)
    by_label: dict[str, float] = {}
    for j in np.flatnonzero(total > 0):
        if ex.table.labels[j] and ex.table.kinds[j] != "global":
            by_label[ex.table.labels[j]] = by_label.get(ex.table.labels[j], 0.0) + float(total[j])
    groups = inspect.top_labels(ex, total)
    assert [label for label, _ in groups] == sorted(by_label, key=lambda label: -by_label[label])[:inspect.TOP_LABELS]
    assert all(ex.table.labels[j] == label and total[j] > 0 for label, members in groups for j in members)
    label_lines = result.timelines[len(result.rows):]
    assert groups and [line.title for line in label_lines] == [f"label {label}: {len(members)} latents summed" for label, members in groups]
    assert all(line.latent is None for line in label_lines) and len(inspect.gallery(result, 0)) == len(result.timelines)


def test_a_labels_map_over_time_is_its_latents_maps_summed(ex):
    generator = ex.generator()
    run = generator.base("a blue star", 3)
    pair = [int(j) for j in run.codes.float().sum(0).argsort(descending=True)[:2]]
    alone, group = timelines(generator, run, [pair[0]], ["alone", "group"], [pair])
    single = timelines(generator, run, [], ["one"], [[pair[0]]])[0]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(single.frames[-1], alone.frames[-1]))
    summed = generator.maps_over_time(run, pair).numpy().sum(0)
    for t in (0, len(group.frames) - 1):
        assert np.array_equal(np.asarray(group.frames[t][1]), np.asarray(overlay(run.image, summed[t], float(summed.max()))))
    assert alone.latent == pair[0] and group.latent is None and group.title == "group"


def test_inspecting_an_upload_finds_latents(ex, tmp_path):
    path = tmp_path / "upload.png"
    ex.bundle.generator.base("a green circle", 1).image.save(path)
    assert inspect.inspect_upload(ex, str(path)).rows
    with pytest.raises(ExplorerError, match="Upload"):
        inspect.inspect_upload(ex, None)


def saved_upload(ex, tmp_path, size=None) -> tuple[str, Image.Image]:
    """A green circle the tiny model drew, saved as a PNG (resized to `size`, if given): an upload."""
    image = ex.bundle.generator.base("a green circle", 3, 4.0).image
    image = image.resize(size, Image.BICUBIC) if size else image
    path = tmp_path / "upload.png"
    image.save(path)
    return str(path), image


def test_an_upload_is_shown_beside_its_reconstruction_with_its_fidelity(ex, tmp_path):
    path, image = saved_upload(ex, tmp_path)
    result = inspect.inspect_upload(ex, path)
    assert np.array_equal(np.asarray(result.image), np.asarray(image))  # the pixel-space tiny model reproduces it exactly
    shown, note = result.upload_outputs()
    assert np.array_equal(np.asarray(shown), np.asarray(upscale(image))) and np.array_equal(np.asarray(result.outputs()[0]), np.asarray(shown))
    assert note == "**reconstruction PSNR 100.0 dB** against your upload at the model's size"  # no resize, no warning
    assert inspect.inspect_prompt(ex, "a blue star", 3).upload_outputs() == (None, "")


def test_an_upload_of_another_size_is_resized_with_a_notice(ex, tmp_path):
    path, _ = saved_upload(ex, tmp_path, size=(40, 24))
    result = inspect.inspect_upload(ex, path)
    assert result.upload.size == result.image.size == (16, 16) and result.rows
    assert "Resized from 40 × 24 to 16 × 16 pixels, the model's size; its aspect ratio changed." in result.note


def test_a_reconstruction_far_from_the_upload_is_flagged_beside_it():
    run = SimpleNamespace(fidelity=12.34, faithful=False, image=Image.new("RGB", (16, 16)))
    note = inspect.upload_note(Image.new("RGB", (32, 32)), run)
    assert note.startswith("**reconstruction PSNR 12.3 dB**")
    assert "Resized from 32 × 32 to 16 × 16 pixels, the model's size." in note  # same aspect: nothing more said
    assert "far from your upload**: edits and steering start from the reconstruction, not from your picture" in note


def edit_upload_call(ex, path, prompt="", start=0, end=5, target="colour=red", target_ids="", use_found=False, found=None,
                     source="colour=green", source_ids="", where="auto", strength=edit.DEFAULT_STRENGTH, automatic=True):
    return your_image.edit_upload(ex, path, prompt, start, end, target, target_ids, use_found, found, source, source_ids, where,
                                  strength, automatic)


def steer_upload_call(ex, path, prompt="", start=0, end=5, mask="everywhere", cells=(), latent=3, position=0.5, mode="add"):
    return your_image.steer_upload(ex, path, prompt, start, end, mask, list(cells), latent, position, mode)


def test_an_upload_edit_shows_the_reconstruction_the_edit_its_positions_and_a_caption(ex, tmp_path):
    path, image = saved_upload(ex, tmp_path)
    base, edited, positions, caption, strength, automatic, made = edit_upload_call(ex, path)
    direct = ex.bundle.edit_image(image, "colour=red", "colour=green", window=(0, 5))
    assert np.array_equal(np.asarray(base), np.asarray(upscale(image)))  # the reconstruction is the upload
    assert np.array_equal(np.asarray(edited), np.asarray(upscale(direct.steered)))
    assert np.array_equal(np.asarray(positions), np.asarray(tint(direct.base, direct.edit.positions)))
    assert caption.startswith("**colour=green → colour=red** (") and caption.endswith("dB** against your upload at the model's size")
    assert edit.describe(direct.edit, "auto") in caption and (strength, automatic) == (direct.edit.strength, True)
    assert made == {"edit_target": "colour=red", "edit_source": "colour=green", "edit_where": "auto", "edit_strength": None}


def test_steering_an_upload_shows_the_reconstruction_steered_and_their_difference(ex, tmp_path):
    path, image = saved_upload(ex, tmp_path, size=(24, 24))
    base, steered, diff, text = steer_upload_call(ex, path, mask="region", cells=["center"])
    direct = ex.bundle.steer_image(image, [steer.Steer(3, alpha_from_position(0.5), "add")], window=(0, 5),
                                   mask=steer.region_mask(["center"]))
    assert np.array_equal(np.asarray(steered), np.asarray(upscale(direct.steered))) and base.size == diff.size == (192, 192)
    assert np.asarray(diff).max() > 0
    assert text.startswith(f"latent 3: add α = {alpha_from_position(0.5):+.2f} × s · steps 0–5 · region (center)")
    assert "Resized from 24 × 24 to 16 × 16 pixels, the model's size." in text
    assert steer_upload_call(ex, path, latent="")[3].startswith("No latent chosen: steered = base.")


@pytest.mark.parametrize("call, bad, message", [
    ("edit", dict(path=None), "Upload an image first"), ("steer", dict(path=None), "Upload an image first"),
    ("edit", dict(path=""), "Upload an image first"), ("steer", dict(latent=99), "Latent 99 does not exist"),
    ("edit", dict(target_ids="99"), "does not exist"), ("steer", dict(position=math.nan), "Strength slider position"),
    ("edit", dict(strength=math.nan, automatic=False), "between 0 and 30"), ("steer", dict(mode="melt"), "Steering mode"),
    ("edit", dict(target=None), "Choose a target concept, or type its latent ids: what should the source become"),
    ("edit", dict(prompt="a red circle " * 50), "at most 500"), ("steer", dict(prompt="a red circle " * 50), "at most 500"),
    ("edit", dict(prompt="a red circle on the top left of a blue square star"), "tokens"), ("edit", dict(where="inside"), "Where to edit"),
    ("steer", dict(mask="region"), "no cell is ticked"), ("steer", dict(start=5, end=1), "window"), ("edit", dict(start=-1), "Window start"),
    ("edit", dict(prompt=3), "The prompt must be text"), ("steer", dict(prompt=["a"]), "The prompt must be text"),
    ("steer", dict(path=None, latent=99), "Latent 99 does not exist"),  # the controls are checked first: fix them before uploading
])
def test_bad_upload_requests_are_explained_and_change_nothing(ex, tmp_path, call, bad, message):
    path, _ = saved_upload(ex, tmp_path, size=(17, 17))  # pixels no other test uploads: a new upload would be cached
    cache = ex.bundle.generator.base_runs.keys()
    with pytest.raises(ExplorerError, match=message):
        (edit_upload_call if call == "edit" else steer_upload_call)(ex, **dict(path=path) | bad)
    assert ex.bundle.generator.base_runs.keys() == cache


def test_find_ranks_latents_by_how_much_more_they_fire_with_the_concept(ex):
    rows, text, _ = find.find_latents(ex, "a red circle\n\n a red star \n", "a blue circle\na blue star", 2)
    assert len(rows) == find.FOUND and "4 images with the concept, 4 without" in text
    differences = [row[2] for row in rows]
    assert differences == sorted(differences, reverse=True)
    for latent, label, difference, interval, with_, without in rows:
        assert label == ex.table.labels[latent] and difference == pytest.approx(with_ - without, abs=2e-3)
        low, high = (float(x) for x in interval.strip("[]").split(","))
        assert low - 5e-3 <= difference <= high + 5e-3


@pytest.mark.parametrize("bad", [
    dict(with_text="", message="at least one prompt"), dict(with_text=None, message="one per line"),
    dict(with_text="a red circle\n" * 33, message="at most 32"), dict(seeds=0, message="between 1 and 8"),
    dict(seeds="two", message="whole number"), dict(without_text="x" * 2000, message="characters long"),
])
def test_bad_find_requests_are_explained_and_make_no_image(ex, bad):
    request = dict(with_text="a red circle", without_text="a blue circle", seeds=2) | bad
    message = request.pop("message")
    cache = ex.bundle.generator.base_runs.keys()
    with pytest.raises(ExplorerError, match=message):
        find.find_latents(ex, **request)
    assert ex.bundle.generator.base_runs.keys() == cache


def test_the_find_panel_opens_with_an_example_in_the_shapes_world_only(ex):
    build = ex.bundle.manifest["build"]
    assert find.example_sets(ex) == ("", "")  # the tiny bundle is built from a prompt file
    original, build["shapes_prompts"] = build.get("shapes_prompts"), 400
    try:
        with_, without = find.example_sets(ex)
        assert len(with_.splitlines()) == len(without.splitlines()) >= 2
    finally:
        build["shapes_prompts"] = original


def test_the_latent_map_shows_every_latent_once_grouped_by_its_label_factor(ex, monkeypatch):
    figure, note = browse.latent_map(ex)
    assert "click" in note
    shown = {j: trace.name for trace in figure.data for j in trace.customdata}
    assert sorted(shown) == list(range(ex.bundle.n_latents))
    for j, group in shown.items():
        assert group == (ex.bundle.labels[j].get("factor") or "unlabelled")
    x = {j: float(v) for trace in figure.data for j, v in zip(trace.customdata, trace.x)}
    assert all(x[j] == pytest.approx(float(ex.bundle.latent_map[j, 0])) for j in shown)
    monkeypatch.delitem(ex.bundle.manifest["files"], "index/latent_map.safetensors")
    monkeypatch.delitem(ex.bundle.__dict__, "latent_map", raising=False)
    figure, note = browse.latent_map(ex)
    assert figure is None and "--stages index" in note


def test_strength_slider_is_exponential_signed_and_invertible():
    assert alpha_from_position(0.0) == 0.0 and alpha_from_position(1.0) == pytest.approx(MAX_ALPHA)
    assert alpha_from_position(-1.0) == pytest.approx(-MAX_ALPHA) and 0 < alpha_from_position(0.1) < 0.5
    for alpha in (-30.0, -1.0, 0.25, 3.0, 50.0):
        assert alpha_from_position(position_from_alpha(alpha)) == pytest.approx(alpha)
    for bad in (math.nan, 1.5, "0.3"):
        with pytest.raises(ExplorerError):
            alpha_from_position(bad)


def test_url_state_round_trips():
    view = ViewState(tab="steer", latent=12, alpha=3.0, mode="scale", prompt="a red star & more", seed=7)
    assert parse_query(dict(parse_qsl(urlsplit(view.query()).query))) == view
    assert parse_query({}) == ViewState()
    edited = ViewState(tab="steer", prompt="a green circle", seed=3, edit_target="colour=red", edit_source="12, 40", edit_where="fired",
                       edit_strength=7.5)
    assert parse_query(dict(parse_qsl(urlsplit(edited.query()).query))) == edited


@pytest.mark.parametrize("bad", [{"tab": "admin"}, {"latent": "x"}, {"alpha": "1e6"}, {"alpha": "nan"}, {"mode": "melt"}, {"seed": "-4"},
                                 {"edit_where": "inside"}, {"edit_where": "everywhere"}, {"edit_strength": "nan"}, {"edit_strength": "31"},
                                 {"edit_strength": "-1"}, {"edit_strength": "strong"}])
def test_malformed_links_are_explained(bad):
    with pytest.raises(ExplorerError):
        parse_query(bad)


def test_a_copied_link_restores_the_same_view(ex):
    restored = views.restore(ex, {"tab": "steer", "latent": "4", "alpha": "3", "prompt": "a red star", "seed": "2"})
    tab, latent, steered, position, mode, prompt, seed = restored
    assert (tab, latent, steered, mode, prompt, seed) == ("steer", 4, "4", "add", "a red star", 2)
    query = views.link(tab, latent, steered, position, mode, prompt, seed)
    assert views.restore(ex, dict(parse_qsl(query[1:]))) == pytest.approx(restored)
    assert views.link("browse", 6, "", 0.0, "add", "", 0) == "?tab=browse&latent=6"
    assert views.link("steer", 6, "", 0.0, "add", "a red star", 0) == "?tab=steer&alpha=0&mode=add&prompt=a+red+star&seed=0"
    assert views.restore(ex, {})[:2] == ("browse", views.default_latent(ex))


def test_a_bundle_whose_model_cannot_load_still_browses(tmp_path):
    explorer = open_explorer(str(ui_bundle_dir()), model_source=str(tmp_path / "no-model"))
    assert not explorer.can_generate and "Generation is off" in explorer.notice
    assert browse.latent_page(explorer, 1).latent == 1
    assert browse.timeline_view(explorer, 1) == (None, 0, None, None, explorer.notice)
    with pytest.raises(ExplorerError, match="Generation is off"):
        steer_call(explorer)


def test_browsing_works_while_the_model_loads_and_generation_waits_for_it():
    explorer = open_explorer(str(ui_bundle_dir()), defer_model=True)
    assert explorer.model_state == "loading" and "loading" in explorer.notice
    assert status.button_label(explorer, "Generate") == status.LOADING_LABEL
    assert browse.latent_page(explorer, 1).latent == 1  # the atlas needs no model
    with pytest.raises(ExplorerError, match="still loading"):
        explorer.generator(wait=0.05)
    waiting = []
    request = threading.Thread(target=lambda: waiting.append(explorer.generator()))
    request.start()  # a generation request arriving now waits for the model instead of failing
    explorer.bundle.attach_model(tiny_model())  # what `load_model` does, with the tiny model
    explorer.notice = ""
    explorer.model_settled.set()
    request.join(timeout=30)
    assert waiting == [explorer.bundle.generator] and explorer.model_state == "ready"
    assert status.button_label(explorer, "Generate") == "Generate" and status.notice_text(explorer) == ""


def test_a_reopened_latent_page_reuses_its_map_over_time(ex, monkeypatch):
    first = browse.timeline_view(ex, 2)
    monkeypatch.setattr(ex.bundle.generator, "base", lambda *a, **k: pytest.fail("the model was called again"))
    again = browse.timeline_view(ex, 2)
    assert again[0] == first[0] and again[2] == first[2]


def test_picture_files_are_shared_by_identical_pictures_and_the_oldest_are_deleted(tmp_path):
    files = ImageFiles(tmp_path, max_files=2)
    red, blue, green = (Image.new("RGB", (4, 4), colour) for colour in ("red", "blue", "green"))
    first = files.path(red)
    assert files.path(Image.new("RGB", (4, 4), "red")) == first and len(files) == 1
    blue_path = files.path(blue)
    files.path(red)  # red used last: blue is now the oldest
    files.path(green)
    assert not Path(blue_path).exists() and Path(first).exists() and len(files) == 2
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".webp", ".webp"]  # no partial files left


def test_a_missing_bundle_is_an_error(tmp_path):
    with pytest.raises(ExplorerError, match="bundle"):
        open_explorer(str(tmp_path / "nothing"))


def test_edited_positions_are_tinted_cells_over_the_dimmed_image():
    weights = np.zeros((8, 8))
    weights[0, 1] = 1.0
    drawn = np.asarray(tint(np.full((32, 32, 3), 128, np.uint8), weights)).astype(int)
    assert drawn.shape == (192, 192, 3)
    assert (drawn[:24, 24:48] == [64, 192, 192]).all()  # the cell, 24 px at this size: half cyan
    assert (drawn[:24, :24] == 58).all() and (drawn[24:] == 58).all()  # the rest dimmed to 0.45


def test_maps_are_drawn_over_upscaled_images():
    image = np.zeros((32, 32, 3), np.uint8)
    assert upscale(image).size == (192, 192)
    heat = np.zeros((8, 8))
    heat[0, 0] = 2.0
    drawn = np.asarray(overlay(image, heat))
    assert drawn[0, 0].sum() > 0 and drawn[-1, -1].sum() == 0


def test_an_unexpected_error_reaches_the_visitor_as_a_message_without_its_text(caplog):
    import gradio as gr

    from ui.app import UNEXPECTED, shown

    def broken():
        raise KeyError("/home/someone/secret/path")

    with pytest.raises(gr.Error) as err:
        shown(broken)()
    assert err.value.message == UNEXPECTED and "secret" in caplog.text
    with pytest.raises(gr.Error, match="Latent"):
        shown(lambda: (_ for _ in ()).throw(ExplorerError("Latent 5 does not exist")))()
