import atexit
import functools

import pytest
from gradio_client import Client

from tests.ports import free_port
from tests.test_ui_handlers import explorer_and_pages, one_thread
from ui.app import LAUNCH, build_app


@functools.cache
def app_url() -> str:
    """The app on the tiny bundle, served once per test session on a free localhost port."""
    demo = build_app(*explorer_and_pages()).queue(default_concurrency_limit=1)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, **LAUNCH)
    atexit.register(demo.close)
    return demo.local_url


@pytest.fixture(scope="module")
def client():
    with one_thread():
        yield Client(app_url(), verbose=False)


def test_the_api_lists_the_app_endpoints(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/search", "/latent_page", "/steer", "/inspect_prompt", "/find_latents", "/edit"} <= set(endpoints)


def test_search_through_the_api(client):
    table, summary = client.predict("red", api_name="/search")
    assert table["data"] and all("red" in row[2] for row in table["data"])  # after the id and the icons
    assert "latents match" in summary


def test_a_latent_page_through_the_api(client):
    latent, header, icons, icon_note, top_images, patches, quantiles, histogram, profile, similar, *_map = client.predict(5, api_name="/latent_page")
    assert latent == 5 and header.startswith("## Latent 5")
    assert [item["caption"] for item in icons] == ["nothing added", "α = +1 × s", "α = +2 × s", "α = +4 × s"]
    assert "Feature icon" in icon_note
    assert top_images and all(item["image"] for item in top_images)
    assert quantiles and all(item["caption"].startswith("q ") for item in quantiles)
    assert similar["data"] and all(row[0] != 5 for row in similar["data"])


def test_a_bad_latent_id_is_a_readable_error(client):
    with pytest.raises(Exception, match="Latent 99 does not exist"):
        client.predict(99, api_name="/latent_page")


def test_steering_through_the_api(client):
    base, steered, diff, history, text = client.predict(
        "a red circle", 0, 4.0, 0, 5, "everywhere", [], "3", 0.5, "add", "", 0, "add", "", 0, "add", api_name="/steer")
    assert base and steered and diff and len(history) == 1 and "latent 3: add" in text


def test_finding_latents_through_the_api(client):
    table, summary = client.predict("a red circle\na red star", "a blue circle\na blue star", 1, api_name="/find_latents")
    assert table["headers"][:3] == ["latent", "label", "difference"] and len(table["data"]) == 20
    assert "2 images with the concept, 2 without" in summary


def test_editing_a_concept_through_the_api(client):
    base, edited, positions, caption, strength, automatic = client.predict(
        "a green circle", 3, 4.0, 0, 5, "colour=red", "", False, "colour=green", "", "auto", 4.5, True, api_name="/edit")
    assert base and edited and positions and caption.startswith("**colour=green → colour=red**") and automatic
    base, edited, positions, caption, strength, automatic = client.predict(
        "a green circle", 3, 4.0, 0, 5, None, "3, 5", False, "(none)", "", "everywhere", 6, False, api_name="/edit")
    assert "latents 3, 5" in caption and "64 of 64 positions" in caption and (strength, automatic) == (6, False)
    with pytest.raises(Exception, match="Latent 99 does not exist"):
        client.predict("a green circle", 3, 4.0, 0, 5, None, "3, 99", False, "(none)", "", "auto", 4.5, True, api_name="/edit")
