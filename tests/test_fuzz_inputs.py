"""Generated bad input (hypothesis) against the handlers and the served API: a result or one clear message, never a crash.

Each property also checks that nothing changed: a normal request answers as before afterwards.
"""

import math
import re

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backend.errors import ExplorerError
from tests.test_ui_api import app_url
from tests.test_ui_handlers import NO_STEER, one_thread, tiny_explorer
from ui import browse, edit, find, steer, views, your_image
from ui.state import MAX_SEED, parse_int, parse_query

PYTHON_ERROR = re.compile(r"invalid literal|Traceback|object has no attribute|KeyError|/tmp/|/work/")  # raw exception text, paths
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# What people and API callers type into id and seed boxes: Unicode digits, dash runs, huge numbers, wrong JSON types.
tricky_text = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="0123456789-+ ²³¹٣०۵.e", max_size=20),
    st.integers(min_value=1, max_value=6000).map(lambda n: "9" * n),
    st.sampled_from(["--5", "²", "1e3", "0x10", "nan", "inf", " 7 ", "-0", "+3", "", "   ", "١٢"]),
)
anything = st.one_of(tricky_text, st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.none(), st.booleans(),
                     st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@pytest.fixture(scope="module")
def ex():
    with one_thread():
        yield tiny_explorer()


@FAST
@given(value=anything)
@example(value="0000000" + "\x1f" * 8 + "\U000101fe\U00012544" + "\U00018cd6" * 3)  # its repr is 4 to 10 times longer
def test_parse_int_answers_an_int_in_range_or_a_message(value):
    try:
        result = parse_int(value, "Seed", 0, MAX_SEED)
    except ExplorerError as err:
        assert str(err).startswith("Seed must be") and len(str(err)) < 200
    else:
        assert type(result) is int and 0 <= result <= MAX_SEED


@FAST
@given(params=st.dictionaries(st.sampled_from(["tab", "latent", "alpha", "mode", "prompt", "seed", "other"]), tricky_text, max_size=6))
def test_any_link_restores_a_view_or_explains_itself(ex, params):
    try:
        view = views.restore(ex, params)
    except ExplorerError:
        parse_error = True
    else:
        parse_error = False
        tab, latent, *_ = view
        assert tab in ("browse", "steer", "inspect") and 0 <= latent < ex.bundle.n_latents
    if parse_error:  # what the app does then: the default view, with the message as a warning
        assert views.restore(ex, {})[0] == "browse"
        with pytest.raises(ExplorerError):
            parse_query(params) if "latent" not in params else views.restore(ex, params)


@FAST
@given(params=st.dictionaries(st.sampled_from(["tab", "edit_target", "edit_source", "edit_where", "edit_strength"]),
                              st.one_of(tricky_text, st.sampled_from(["steer", "colour=red", "3, 5", "fired", "6"])), max_size=5))
def test_any_edit_link_restores_the_edit_panel_or_explains_itself(ex, params):
    try:
        target, target_ids, source, source_ids, where, strength, automatic, made = views.restore_edit(ex, params)
    except ExplorerError as err:
        assert str(err) and not PYTHON_ERROR.search(str(err))
    else:
        assert where in edit.WHERE_CHOICES and automatic == (params.get("edit_strength") is None or made is None)
        assert made is None or made["edit_target"] in (target, target_ids)


@FAST
@given(value=anything)
def test_a_latent_page_for_any_id_box_value_is_a_page_or_a_message(ex, value):
    try:
        page = browse.latent_page(ex, value)
    except ExplorerError as err:
        assert "atent" in str(err) or "number" in str(err)
    else:
        assert 0 <= page.latent < ex.bundle.n_latents
    assert browse.latent_page(ex, 3).latent == 3


strength = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10**6, max_value=10**6), st.none(), st.text(max_size=5))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(latent=anything, position=strength, mode=st.one_of(st.sampled_from(["add", "scale", "ablate"]), st.text(max_size=6)),
       seed=anything, prompt=st.one_of(st.text(max_size=100), st.just("x" * 5000), st.none()))
def test_a_steer_request_of_any_shape_is_an_image_or_a_message(ex, latent, position, mode, seed, prompt):
    history_before = []
    try:
        base, steered, diff, history, text = steer.steer(ex, prompt, seed, 4.0, 0, 5, "everywhere", [], history_before,
                                                         latent, position, mode, *NO_STEER)
    except ExplorerError as err:
        assert str(err) and "Traceback" not in str(err)
    else:
        assert base.size == steered.size and len(history) == 1
        slot_on = latent not in ("", None)
        valid_strength = isinstance(position, int | float) and not isinstance(position, bool) and math.isfinite(position) and abs(position) <= 1
        assert not slot_on or mode == "ablate" or valid_strength
    assert history_before == []  # the caller's history is never changed in place


concept_text = st.one_of(st.sampled_from(["colour=red", "colour=pink", "shape = star", "=", "(none)", "3, 5", "3 99", "colour=red, 3"]),
                         tricky_text, st.none(), st.integers())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=concept_text, target_ids=concept_text, source=concept_text, where=st.one_of(st.sampled_from(list(edit.WHERE_CHOICES)), st.text(max_size=6)),
       strength=strength, automatic=st.one_of(st.booleans(), st.none(), st.text(max_size=3)), seed=anything)
def test_an_edit_request_of_any_shape_is_an_edit_or_a_message(ex, target, target_ids, source, where, strength, automatic, seed):
    try:
        base, edited, positions, caption, used, was_automatic, made = edit.edit(
            ex, "a green circle", seed, 4.0, 0, 5, target, target_ids, False, None, source, "", where, strength, automatic)
    except ExplorerError as err:
        assert str(err) and not PYTHON_ERROR.search(str(err))
    else:
        assert base.size == edited.size == positions.size and caption.startswith("**") and was_automatic == automatic
        assert made["edit_target"] in (target, str(target_ids or "").strip())


@pytest.fixture(scope="module")
def upload(ex, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("upload") / "upload.png"
    ex.bundle.generator.base("a green circle", 3, 4.0).image.save(path)
    return str(path)


# what the upload box holds: the good file, nothing, a missing file, or no path at all
upload_value = st.one_of(st.just("the upload"), st.sampled_from([None, "", "missing.png", 7, {"path": "x"}, ["a.png"]]))
optional_prompt = st.one_of(st.text(max_size=60), st.just("x" * 600), st.just("a red circle on the top left of a blue square star"), st.none(),
                            st.integers())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=upload_value, prompt=optional_prompt, target=concept_text, source=concept_text, where=st.one_of(st.sampled_from(list(edit.WHERE_CHOICES)),
       st.text(max_size=6)), strength=strength, automatic=st.one_of(st.booleans(), st.none()), start=anything)
def test_an_upload_edit_request_of_any_shape_is_an_edit_or_a_message(ex, upload, path, prompt, target, source, where, strength, automatic,
                                                                       start):
    try:
        base, edited, positions, caption, used, was_automatic, made = your_image.edit_upload(
            ex, upload if path == "the upload" else path, prompt, start, 5, target, "", False, None, source, "", where, strength, automatic)
    except ExplorerError as err:
        assert str(err) and not PYTHON_ERROR.search(str(err))
    else:
        assert base.size == edited.size == positions.size and caption.startswith("**") and "reconstruction PSNR" in caption
    assert your_image.edit_upload(ex, upload, "", 0, 5, None, "3", False, None, "", "", "everywhere", 2, False)[3].startswith("**→ latents 3**")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=upload_value, prompt=optional_prompt, latent=anything, position=strength, mode=st.one_of(st.sampled_from(["add", "scale", "ablate"]),
       st.text(max_size=6)), mask=st.one_of(st.sampled_from(steer.MASK_CHOICES), st.text(max_size=6)),
       cells=st.one_of(st.none(), st.lists(st.one_of(st.sampled_from(steer.CELLS), st.text(max_size=6)), max_size=3)), end=anything)
def test_an_upload_steer_request_of_any_shape_is_an_image_or_a_message(ex, upload, path, prompt, latent, position, mode, mask, cells, end):
    try:
        base, steered, diff, text = your_image.steer_upload(ex, upload if path == "the upload" else path, prompt, 0, end, mask, cells,
                                                            latent, position, mode)
    except ExplorerError as err:
        assert str(err) and not PYTHON_ERROR.search(str(err))
    else:
        assert base.size == steered.size == diff.size and "reconstruction PSNR" in text
    assert your_image.steer_upload(ex, upload, "", 0, 5, "everywhere", [], "", 0.0, "add")[3].startswith("No latent chosen")


prompt_list = st.one_of(st.text(max_size=60), st.lists(st.sampled_from(["a red circle", "a blue star", " ", "", "x" * 400]), max_size=40).map("\n".join),
                        st.none(), st.integers())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(with_text=prompt_list, without_text=prompt_list, seeds=anything)
def test_a_find_request_of_any_shape_is_a_ranking_or_a_message(ex, with_text, without_text, seeds):
    try:
        rows, text, _ = find.find_latents(ex, with_text, without_text, seeds)
    except ExplorerError as err:
        assert str(err) and not PYTHON_ERROR.search(str(err))
    else:
        assert len(rows) == find.FOUND and "images with the concept" in text
        differences = [row[2] for row in rows]
        assert differences == sorted(differences, reverse=True)


@pytest.fixture(scope="module")
def client():
    with one_thread():
        yield Client(app_url(), verbose=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(tricky_text, st.integers(min_value=-10**12, max_value=10**12)))
def test_the_served_latent_page_answers_any_id_with_a_page_or_a_message(client, value):
    try:
        latent, header, *_ = client.predict(value, api_name="/latent_page")
    except AppError as err:
        assert str(err).strip() not in ("", "Error") and not PYTHON_ERROR.search(str(err))
    else:
        assert header.startswith(f"## Latent {latent}")
    assert client.predict(2, api_name="/latent_page")[0] == 2


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.one_of(tricky_text, st.text(max_size=300), st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2)))
def test_the_served_search_answers_any_query_with_rows_or_a_message(client, query):
    try:
        table, summary = client.predict(query, api_name="/search")
    except AppError as err:
        assert str(err).strip() not in ("", "Error") and not PYTHON_ERROR.search(str(err))
    else:
        assert "latents match" in summary
    assert client.predict("", api_name="/search")[1].startswith("32 of 32")
