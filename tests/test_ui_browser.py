import re
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.test_ui_api import app_url
from tests.test_ui_handlers import one_thread

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).parent / "screenshots"
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    SHOTS.mkdir(exist_ok=True)
    with one_thread(), sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1100})
        tab.set_default_timeout(TIMEOUT_MS)
        yield tab
        browser.close()


def test_search_open_a_latent_and_steer_it(page):
    page.goto(app_url(), wait_until="load")
    page.wait_for_selector("#latent-header h2")
    page.locator("#search textarea, #search input").first.fill("red")
    page.locator("#latent-table [data-testid=cell-0-2]", has_text="red").wait_for()  # after the id and the icons
    first = page.locator("#latent-table [data-testid=cell-0-0]")
    latent = first.inner_text().strip()
    first.click()
    page.locator("#latent-header h2", has_text=f"Latent {latent}").wait_for()
    page.get_by_text("recorded step 3/3").wait_for()  # the maps over time, from the regenerated top image
    page.locator("#quantile-images", has_text="q 75–100 %").wait_for()  # examples across the activation range
    page.screenshot(path=SHOTS / "browse.png", full_page=True)

    page.locator("#to-steer").click()
    page.locator("#applied", has_text=f"latent {latent}: add").wait_for()
    page.locator("#steer-strength-0 input[type=range]").fill("-0.8")
    page.locator("#applied", has_text=re.compile(rf"latent {latent}: add α = -\d")).wait_for()
    page.wait_for_selector("#steered-image img")
    page.screenshot(path=SHOTS / "steer.png", full_page=True)

    page.get_by_role("button", name="Copy link to this view").click()
    link = page.locator("#link textarea, #link input").first
    page.wait_for_function("(el) => el.value.includes('tab=steer')", arg=link.element_handle())
    assert f"latent={latent}&alpha=-" in link.input_value()


def test_a_latent_and_the_table_export_as_files(page):
    page.goto(app_url(), wait_until="load")
    page.wait_for_selector("#latent-header h2")
    latent = page.locator("#latent-header h2").inner_text().split()[-1]
    page.locator("#export-latent").click()
    link = page.locator(f"#exported a[download='latent-{latent}.json']")
    record = page.request.get(link.get_attribute("href")).json()  # the file the browser downloads
    assert record["latent"] == int(latent) and record["top_images"]
    page.locator("#export-table-csv").click()
    link = page.locator("#exported a[download='latents.csv']")
    table = page.request.get(link.get_attribute("href")).text().splitlines()
    assert table[0].startswith("latent,kind,label,effect,effect_agrees,purity") and len(table) > 1
    page.locator("#exported").screenshot(path=SHOTS / "export.png")


def test_find_the_latents_for_a_concept_and_open_one(page):
    page.goto(app_url(), wait_until="load")
    page.wait_for_selector("#latent-header h2")
    page.get_by_text("Find latents for a concept").click()
    page.locator("#find-with textarea").fill("a red circle\na red star")
    page.locator("#find-without textarea").fill("a blue circle\na blue star")
    page.locator("#find-button").click()
    page.locator("#find-summary", has_text="4 images with the concept, 4 without").wait_for()
    first = page.locator("#find-table [data-testid=cell-0-0]")
    latent = first.inner_text().strip()
    page.locator("#find-panel").screenshot(path=SHOTS / "find.png")
    first.click()
    page.locator("#latent-header h2", has_text=f"Latent {latent}").wait_for()


def test_pin_a_steered_result_and_compare_the_next_one_with_it(page):
    page.goto(app_url() + "?tab=steer&latent=3&alpha=2&prompt=a%20red%20circle", wait_until="load")
    page.locator("#applied", has_text="latent 3: add α = +2.00").wait_for()
    page.locator("#pin").click()
    page.locator("#pinned-text", has_text="Pinned: a red circle · seed").wait_for()
    page.wait_for_selector("#pinned-image img")
    page.locator("#steer-strength-0 input[type=range]").fill("-0.8")
    page.locator("#applied", has_text=re.compile(r"latent 3: add α = -\d")).wait_for()
    assert "α = +2.00" in page.locator("#pinned-text").inner_text()  # the pin keeps the settings that made it
    page.screenshot(path=SHOTS / "steer-compare.png", full_page=True)


def test_the_map_of_all_latents_opens_a_latent_on_click(page):
    page.goto(app_url(), wait_until="load")
    page.wait_for_selector("#latent-header h2")
    page.get_by_text("Map of all latents").click()
    page.wait_for_selector("#latent-map .js-plotly-plot .point")
    page.wait_for_function("() => document.querySelector('#latent-map .js-plotly-plot').dataset.opens === '1'")
    page.locator("#latent-map").screenshot(path=SHOTS / "latent-map.png")
    point = page.locator("#latent-map .js-plotly-plot .scatterlayer .trace").first.locator(".point").first
    latent = page.evaluate("() => document.querySelector('#latent-map .js-plotly-plot').data[0].customdata[0]")
    point.click(force=True)
    page.locator("#latent-header h2", has_text=f"Latent {latent}").wait_for()


def test_feature_icons_show_on_the_latent_page_and_in_the_table(page):
    page.goto(app_url(), wait_until="load")
    page.wait_for_selector("#latent-header h2")
    page.locator("#icon-note", has_text="Feature icon").wait_for()
    gallery = page.locator("#feature-icons img")
    gallery.nth(3).wait_for()
    assert gallery.count() == 4  # the unsteered image and three strengths
    strip = page.locator("#latent-table [data-testid=cell-0-1] img")  # the first row's icons, after its id
    strip.wait_for()
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=strip.element_handle())
    width, height = page.evaluate("(img) => [img.naturalWidth, img.naturalHeight]", strip.element_handle())
    assert (width, height) == (48, 16)  # three 16 px icons side by side, served as drawn
    first_id = page.locator("#latent-table [data-testid=cell-0-0]").inner_text().strip()
    assert strip.get_attribute("alt") == f"latent {first_id}"
    page.screenshot(path=SHOTS / "icons.png", full_page=True)


def test_edit_a_concept_and_share_it(page):
    page.goto(app_url() + "?tab=steer&prompt=a%20green%20circle&seed=3", wait_until="load")
    page.wait_for_selector("#base-image img")
    page.get_by_text("Edit a concept").click()
    for box, choice in (("#edit-source", "colour=green"), ("#edit-target", "colour=red")):
        page.locator(f"{box} input").click()
        page.locator(box).get_by_role("option", name=choice, exact=True).click()  # this dropdown's list, not one still closing
    page.locator("#edit-caption", has_text="colour=green → colour=red").wait_for()  # choosing the target edits at once
    page.wait_for_selector("#edited-image img")
    page.wait_for_selector("#edit-positions img")
    page.locator("#edit-panel").screenshot(path=SHOTS / "edit.png")
    slider = page.locator("#edit-strength input[type=range]")
    slider.fill("10")
    slider.dispatch_event("pointerup")  # released: a strength set by hand
    page.locator("#edit-caption", has_text="strength 10 × s, set by hand").wait_for()
    assert not page.locator("#edit-automatic input").is_checked()

    page.get_by_role("button", name="Copy link to this view").click()
    link = page.locator("#link textarea, #link input").first
    page.wait_for_function("(el) => el.value.includes('edit_target')", arg=link.element_handle())
    assert "edit_target=colour%3Dred&edit_source=colour%3Dgreen&edit_where=auto" in link.input_value()
    page.goto(link.input_value(), wait_until="load")  # the link reopens the panel and makes the same edit
    page.locator("#edit-caption", has_text="colour=green → colour=red").wait_for()
    page.wait_for_selector("#edit-positions img")


def test_upload_an_image_see_its_reconstruction_and_edit_it(page, tmp_path):
    upload = tmp_path / "circle.png"
    image = Image.new("RGB", (48, 40), (128, 128, 128))  # not the model's size: resized, with a notice
    ImageDraw.Draw(image).ellipse((12, 8, 36, 32), fill=(30, 200, 30))
    image.save(upload)
    page.goto(app_url() + "?tab=inspect", wait_until="load")
    page.locator("#upload input[type=file]").set_input_files(str(upload))
    page.locator("#upload", has_text="circle.png").wait_for()
    page.locator("#analyse").click()
    page.locator("#upload-note", has_text="reconstruction PSNR").wait_for()
    assert "Resized from 48 × 40 to 16 × 16 pixels" in page.locator("#upload-note").inner_text()
    page.wait_for_selector("#uploaded img")
    page.wait_for_selector("#reconstruction img")
    for box, choice in (("#upload-edit-source", "colour=green"), ("#upload-edit-target", "colour=red")):
        page.locator(f"{box} input").click()
        page.locator(box).get_by_role("option", name=choice, exact=True).click()
    page.locator("#upload-edit-caption", has_text="colour=green → colour=red").wait_for()  # choosing the target edits at once
    page.wait_for_selector("#upload-edited-image img")
    page.wait_for_selector("#upload-edit-positions img")
    assert "reconstruction PSNR" in page.locator("#upload-edit-caption").inner_text()
    page.screenshot(path=SHOTS / "upload.png", full_page=True)
