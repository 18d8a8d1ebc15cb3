"""The Gradio app: lays out the three tabs and wires their events to the handlers in `ui/` (no logic here)."""

import functools
import logging
import time
from dataclasses import dataclass
from typing import Callable

import gradio as gr

from backend.errors import ExplorerError
from ui import browse, edit, export, find, inspect, status, steer, timeline, views, your_image
from ui.explorer import Explorer
from ui.icons import IconCells
from ui.image_files import temporary_folder
from ui.page_files import PageFiles, served_page
from ui.worker import MODEL_CONCURRENCY, local_calls, spaces_module
from ui.latents import DEFAULT_SORT, SORTS
from backend.serving.edits import MAX_EDIT_STRENGTH
from ui.state import STEER_MODES, alpha_from_position
from ui.uploads import FILE_TYPES, MAX_UPLOAD_BYTES

log = logging.getLogger(__name__)

TITLE = "Temporal SAE Explorer"
UNEXPECTED = "Something went wrong on the server with this request; its log has the details. Other requests are unaffected."
INTRO = ("Sparse features of a diffusion model's activations *over the denoising trajectory* "
         "(a residualized temporal SAE). Browse the latents, watch their maps form step by step, and steer generation with them.")
EDIT_INTRO = ("Puts a concept into the prompt and seed above (with their guidance and step window): where it belongs (an object "
              "attribute on the object, a background value off it, both read from the base run's codes), in place of the other values "
              "of its factor, or of a source concept where that fired. Typed latent ids override the list beside them.")
UPLOAD_EDIT_INTRO = ("Puts a concept into your upload, starting from its reconstruction (conditioned on its prompt, if given): where it "
                     "belongs, in place of the other values of its factor, or of a source concept where that fired. Typed latent ids "
                     "override the list beside them.")
# every launch of the app: uploads capped, messages shown, the state of the oldest sessions dropped beyond SESSIONS
SESSIONS = 200
# the latent table's icon strips, one row tall (the page's gallery shows each icon large)
CSS = "#latent-table img { height: 24px; width: auto; max-width: none; margin: 0; }"
LAUNCH = dict(max_file_size=MAX_UPLOAD_BYTES, show_error=True, state_session_capacity=SESSIONS, css=CSS)
STATE_LIFETIME = 900  # seconds a session keeps its image-holding state (timeline frames, history) after its last update
CACHE_LIFETIME = (600, 3600)  # every 10 min, delete uploads and outputs older than an hour (and all of them at shutdown)
# model events run side by side so their sampling runs share UNet calls (backend/serving/batching.py); more wait in the queue
MODEL = dict(concurrency_limit=MODEL_CONCURRENCY, concurrency_id="model")
BROWSE = dict(concurrency_limit=None)  # atlas look-ups never wait on the model
# a click on a point of the latent map opens that latent: plotly's click event is bound once the map is drawn
MAP_CLICK_JS = """() => {
  setInterval(() => {
    document.querySelectorAll('#latent-map .js-plotly-plot').forEach((plot) => {
      if (plot.dataset.opens || !plot.on) { return; }
      plot.dataset.opens = '1';
      plot.on('plotly_click', (event) => {
        const box = document.querySelector('#latent-box input');
        box.value = String(event.points[0].customdata);
        box.dispatchEvent(new Event('input', { bubbles: true }));
        document.querySelector('#open-latent').click();
      });
    });
  }, 500);
}"""
COPY_LINK_JS = """(query) => {
  const url = window.location.origin + window.location.pathname + query;
  if (navigator.clipboard) { navigator.clipboard.writeText(url).catch(() => {}); }
  return url;
}"""


def shown(fn):
    """`fn` with ExplorerError shown to the user as a gr.Error: its message, no traceback, no outputs changed.

    Any other exception is a bug: the server's log gets it whole, the visitor a message with no
    exception text (which can hold local paths).
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except ExplorerError as err:
            raise gr.Error(str(err)) from None
        except Exception:
            log.exception("unexpected error in %s", getattr(fn, "__name__", fn))
            raise gr.Error(UNEXPECTED) from None
    return wrapper


def on_gpu(fn):
    """`fn` under `spaces.GPU` on a Hugging Face ZeroGPU Space, unchanged elsewhere."""
    spaces = spaces_module()
    return spaces.GPU(fn) if spaces is not None else fn


def strength_text(position) -> str:
    """The strength a slider position stands for, e.g. 'α = +3.20 × s'."""
    return f"α = {alpha_from_position(position):+.2f} × s"


def steer_slot(i: int, prefix: str = "") -> tuple:
    """Controls of one steered latent: id box, strength slider, mode, and the strength as text."""
    with gr.Group():
        with gr.Row():
            latent = gr.Textbox(label=f"Latent {i + 1}", placeholder="latent id (empty: off)", elem_id=f"{prefix}steer-latent-{i}", scale=1)
            mode = gr.Radio(list(STEER_MODES), value="add", label="Mode", scale=2)
        position = gr.Slider(-1, 1, value=0, step=0.01, label="Strength (exponential, ±50 × typical activation)",
                             elem_id=f"{prefix}steer-strength-{i}")
        alpha = gr.Markdown(strength_text(0))
    return latent, position, mode, alpha


def steer_results(base_label: str, prefix: str = "", pinned: bool = False) -> tuple:
    """Where a steering shows: base and steered images (a pinned result beside them, if `pinned`), their difference, what was applied."""
    with gr.Row():
        images = (gr.Image(label=base_label, elem_id=f"{prefix}base-image"), gr.Image(label="Steered", elem_id=f"{prefix}steered-image"),
                  gr.Image(label="Pinned", elem_id="pinned-image") if pinned else None, gr.Image(label="Difference (×4)"))
    return *images, gr.Markdown(elem_id=f"{prefix}applied")


def window_sliders(ex: Explorer) -> tuple[gr.Slider, gr.Slider]:
    """The sampler-step window an edit or a steering works in: start and end."""
    with gr.Row():
        return (gr.Slider(0, ex.num_steps - 1, value=0, step=1, label="Window start (sampler step)"),
                gr.Slider(0, ex.num_steps - 1, value=ex.num_steps - 1, step=1, label="Window end"))


def mask_controls() -> tuple[gr.Radio, gr.CheckboxGroup]:
    """Where a steering works: a mask choice and the cells of its region."""
    return (gr.Radio(list(steer.MASK_CHOICES), value="everywhere", label="Where"),
            gr.CheckboxGroup(list(steer.CELLS), label="Region (3×3 grid, for 'region')"))


@dataclass
class EditPanel:
    """An Edit panel's components, the Steer tab's or the Your image tab's (their element ids differ by a prefix)."""

    source: gr.Dropdown
    source_ids: gr.Textbox
    target: gr.Dropdown
    target_ids: gr.Textbox
    use_found: gr.Checkbox
    where: gr.Radio
    window: tuple  # the panel's own step window sliders; none where it shares its tab's
    strength: gr.Slider
    automatic: gr.Checkbox
    button: gr.Button
    base: gr.Image
    edited: gr.Image
    positions: gr.Image
    caption: gr.Markdown
    made: gr.State  # the last edit's link fields (ViewState's edit_*); None: no edit made

    def controls(self, found: gr.State) -> list:
        """The controls in the order `edit.edit_request` reads them; `found`: the latest Find result."""
        return [self.target, self.target_ids, self.use_found, found, self.source, self.source_ids, self.where, self.strength,
                self.automatic]

    def outputs(self) -> list:
        """What an edit handler returns into, in its order."""
        return [self.base, self.edited, self.positions, self.caption, self.strength, self.automatic, self.made]


def edit_panel(ex: Explorer, intro: str, button: str, base_label: str = "Base", prefix: str = "", own_window: bool = False) -> EditPanel:
    """Lay out an Edit panel: source and target (a label, typed ids or the latest Find result), where, strength, and its results."""
    gr.Markdown(intro)
    with gr.Row():
        with gr.Column(scale=2):
            choices = edit.label_choices(ex)
            with gr.Row():
                source = gr.Dropdown([edit.NONE, *choices], value=edit.NONE, label="Source (what to replace)",
                                     elem_id=f"{prefix}edit-source")
                source_ids = gr.Textbox(label="…or source latent ids", placeholder="e.g. 12, 40", elem_id=f"{prefix}edit-source-ids")
            with gr.Row():
                target = gr.Dropdown(choices, value=None, label="Target (what to put in)", elem_id=f"{prefix}edit-target")
                target_ids = gr.Textbox(label="…or target latent ids", placeholder="e.g. 12, 40", elem_id=f"{prefix}edit-target-ids")
            use_found = gr.Checkbox(False, label="Use the latest Find result (Browse tab) as the target", elem_id=f"{prefix}edit-use-found")
            where = gr.Radio(list(edit.WHERE_CHOICES), value="auto", label="Where", elem_id=f"{prefix}edit-where")
            window = window_sliders(ex) if own_window else ()
            with gr.Row():
                strength = gr.Slider(0, MAX_EDIT_STRENGTH, value=edit.DEFAULT_STRENGTH, step=0.5, scale=3,
                                     label="Strength (× typical activation)", elem_id=f"{prefix}edit-strength")
                automatic = gr.Checkbox(True, label="automatic (the smallest that reaches)", scale=1, elem_id=f"{prefix}edit-automatic")
            run = gr.Button(status.button_label(ex, button), variant="primary", elem_id=f"{prefix}edit-button")
        with gr.Column(scale=3):
            with gr.Row():
                base = gr.Image(label=base_label, elem_id=f"{prefix}edit-base")
                edited = gr.Image(label="Edited", elem_id=f"{prefix}edited-image")
                positions = gr.Image(label="Edited positions", elem_id=f"{prefix}edit-positions")
            caption = gr.Markdown(elem_id=f"{prefix}edit-caption")
    return EditPanel(source, source_ids, target, target_ids, use_found, where, window, strength, automatic, run, base, edited,
                     positions, caption, gr.State(None))


def build_app(ex: Explorer, pages: PageFiles, model: Callable | None = None) -> gr.Blocks:
    """Lay out the app for one explorer whose latent pages are served from `pages`; every event calls a handler from `ui/`.

    `model(handler)` runs a handler that needs the model: in a worker process (ui/worker.ModelWorker) or, by default, here.
    """
    model = model or local_calls(ex)

    def on_model(handler: Callable) -> Callable:
        return status.progressed(model(handler))
    steps = len(ex.recorded_steps)
    exports = temporary_folder("exports")
    icon_cells = IconCells(ex, temporary_folder("icons"))
    first = served_page(ex, views.default_latent(ex), pages)  # drawn into the page itself: on screen before any event runs
    rows, listed = browse.table(ex, icon_cells)
    with gr.Blocks(title=TITLE, delete_cache=CACHE_LIFETIME) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        notice = gr.Markdown(status.notice_text(ex), visible=bool(ex.notice), elem_id="notice")
        model_watch = gr.Timer(1.0, active=ex.model_state == "loading")
        current_tab = gr.State("browse")
        with gr.Tabs(selected="browse") as tabs:
            with gr.Tab("Browse", id="browse") as browse_tab:
                with gr.Row():
                    with gr.Column(scale=6):
                        query = gr.Textbox(label="Search", placeholder="a latent id, or label words such as 'red'", elem_id="search")
                        with gr.Row():
                            sort = gr.Dropdown(list(SORTS), value=DEFAULT_SORT, label="Sort by")
                            labelled = gr.Checkbox(label="Labelled only")
                            min_freq = gr.Number(0.0, label="Min frequency", minimum=0, maximum=1, step=0.001)
                        summary = gr.Markdown(listed)
                        headers = browse.table_headers(ex)
                        table = gr.Dataframe(rows, headers=headers, interactive=False, max_height=640, elem_id="latent-table", wrap=True,
                                             datatype=["markdown" if name == browse.ICONS_HEADER else "str" for name in headers],
                                             column_widths=[browse.COLUMN_WIDTHS[name] for name in headers])
                        with gr.Accordion("Find latents for a concept", open=False, elem_id="find-panel"):
                            with_example, without_example = find.example_sets(ex)
                            with gr.Row():
                                find_with = gr.Textbox(with_example, lines=4, label="Prompts with the concept (one per line)", elem_id="find-with")
                                find_without = gr.Textbox(without_example, lines=4, label="The same without it (one per line)", elem_id="find-without")
                            with gr.Row():
                                find_seeds = gr.Number(2, label="Seeds per prompt", precision=0, minimum=1, maximum=find.MAX_SEEDS)
                                find_btn = gr.Button(status.button_label(ex, status.BUTTONS[3]), variant="primary", elem_id="find-button")
                            find_summary = gr.Markdown(elem_id="find-summary")
                            find_table = gr.Dataframe(headers=find.HEADERS, interactive=False, max_height=400, elem_id="find-table",
                                                      column_widths=["11%", "27%", "15%", "23%", "12%", "12%"])
                        with gr.Accordion("Map of all latents", open=False):
                            figure, map_note = browse.latent_map(ex)
                            gr.Markdown(map_note, elem_id="map-note")
                            gr.Plot(figure, visible=figure is not None, show_label=False, elem_id="latent-map")
                    with gr.Column(scale=6):
                        with gr.Row():
                            latent_box = gr.Number(first.latent, label="Latent", precision=0, elem_id="latent-box")
                            open_btn = gr.Button("Open", elem_id="open-latent")
                            to_steer = gr.Button("Steer with this latent", variant="primary", elem_id="to-steer")
                        header = gr.Markdown(first.header, elem_id="latent-header")
                        icon_note = gr.Markdown(first.icon_note, elem_id="icon-note")
                        icon_gallery = gr.Gallery(first.icons, label="Feature icon (this latent added to a neutral prompt)", columns=4,
                                                  height=170, elem_id="feature-icons", visible=ex.icons is not None)
                        top_gallery = gr.Gallery(first.top_images, label="Top images (map overlaid)", columns=4, height=330, elem_id="top-images")
                        patches = gr.Gallery(first.top_patches, label="Top patches (cell outlined)", columns=4, height=330)
                        quantiles = gr.Gallery(first.quantile_images, label="Examples across its activation range (weakest quarter first)", columns=4,
                                               height=330, elem_id="quantile-images")
                        with gr.Row():
                            histogram = gr.Plot(first.histogram, label="Activation histogram")
                            profile = gr.Plot(first.profile, label="Temporal profile")
                        gr.Markdown("### Map over denoising time (top image, regenerated)")
                        with gr.Row():
                            x0_image = gr.Image(label="over the model's estimate x0 at this step", height=220)
                            final_image = gr.Image(label="over the final image", height=220)
                        with gr.Row():
                            step = gr.Slider(0, steps - 1, value=steps - 1, step=1, label="Recorded step", scale=4)
                            play = gr.Button("▶ Play", scale=1)
                        step_caption = gr.Markdown()
                        # a page whose map is not drawn yet sets this; its change asks the model for the map
                        map_request = gr.Textbox(visible="hidden", elem_id="map-request")
                        similar = gr.Dataframe(first.similar, headers=browse.SIMILAR_HEADERS, interactive=False, label="Similar latents (feature trajectory)")
                        with gr.Row():
                            table_csv = gr.Button("Latent table as CSV", size="sm", elem_id="export-table-csv")
                            table_json = gr.Button("Latent table as JSON", size="sm")
                            latent_json = gr.Button("This latent as JSON", size="sm", elem_id="export-latent")
                        exported = gr.File(label="Export", interactive=False, elem_id="exported")
            with gr.Tab("Steer", id="steer") as steer_tab:
                with gr.Row():
                    with gr.Column(scale=2):
                        prompt = gr.Textbox(label="Prompt", elem_id="steer-prompt")
                        with gr.Row():
                            seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                            guidance = gr.Slider(0, 15, value=ex.bundle.manifest["schedule"].get("guidance_scale", 7.5), step=0.5, label="Guidance")
                        slots = [steer_slot(0)]
                        with gr.Accordion("More latents at once", open=False):
                            slots += [steer_slot(i) for i in range(1, steer.SLOTS)]
                        start, end = window_sliders(ex)
                        mask, cells = mask_controls()
                        generate = gr.Button(status.button_label(ex, status.BUTTONS[0]), variant="primary", elem_id="steer-generate")
                    with gr.Column(scale=3):
                        base_image, steered_image, pinned_image, diff_image, applied = steer_results("Base", pinned=True)
                        with gr.Row():
                            pin_btn = gr.Button("Pin this result", size="sm", scale=1, elem_id="pin")
                            pinned_text = gr.Markdown("Pin a result to keep it beside the next ones.", elem_id="pinned-text")
                        history = gr.Gallery(label="History", columns=6, height=220, preview=False, object_fit="contain", fit_columns=False)
                with gr.Accordion("Edit a concept", open=False, elem_id="edit-panel") as edit_accordion:
                    steer_edit = edit_panel(ex, EDIT_INTRO, status.BUTTONS[4])
                history_state = gr.State([], time_to_live=STATE_LIFETIME)
            with gr.Tab("Your image", id="inspect") as inspect_tab:  # id: the tab's links from when it was called Inspect
                with gr.Row():
                    with gr.Column(scale=2):
                        upload = gr.File(label="Upload an image (PNG, JPEG, WebP, GIF or BMP; up to 16 MB and 4096 × 4096)",
                                         file_types=FILE_TYPES, type="filepath", elem_id="upload")
                        upload_prompt = gr.Textbox(label="Its prompt (optional)", elem_id="upload-prompt")
                        analyse = gr.Button(status.button_label(ex, status.BUTTONS[1]), variant="primary", elem_id="analyse")
                        gr.Markdown("…or generate one")
                        inspect_prompt = gr.Textbox(label="Prompt")
                        inspect_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                        inspect_generate = gr.Button(status.button_label(ex, status.BUTTONS[2]))
                    with gr.Column(scale=3):
                        with gr.Row():
                            uploaded = gr.Image(label="Your upload, at the model's size", height=256, elem_id="uploaded")
                            inspected = gr.Image(label="Reconstruction (or the generated image)", height=256, elem_id="reconstruction")
                        upload_note = gr.Markdown(elem_id="upload-note")
                        inspect_table = gr.Dataframe(headers=inspect.HEADERS, interactive=False, label="Most active latents (click to open)")
                        inspect_step = gr.Slider(0, steps - 1, value=steps - 1, step=1, label="Recorded step")
                        inspect_maps = gr.Gallery(label="Their maps at this step, then the top labels' (each label's latents summed)",
                                                  columns=4, height=300)
                with gr.Accordion("Edit a concept in your image", open=True, elem_id="upload-edit-panel"):
                    upload_edit = edit_panel(ex, UPLOAD_EDIT_INTRO, status.BUTTONS[5], base_label="Reconstruction", prefix="upload-",
                                             own_window=True)
                with gr.Accordion("Steer your image with a latent", open=False, elem_id="upload-steer-panel"):
                    with gr.Row():
                        with gr.Column(scale=2):
                            upload_slot = steer_slot(0, prefix="upload-")
                            upload_start, upload_end = window_sliders(ex)
                            upload_mask, upload_cells = mask_controls()
                            upload_steer = gr.Button(status.button_label(ex, status.BUTTONS[6]), variant="primary",
                                                     elem_id="upload-steer-button")
                        with gr.Column(scale=3):
                            upload_base, upload_steered, _, upload_diff, upload_applied = steer_results("Reconstruction", prefix="upload-")
                inspection = gr.State(None, time_to_live=STATE_LIFETIME)
        with gr.Row():
            link_btn = gr.Button("Copy link to this view", scale=1)
            link = gr.Textbox(label="Link", interactive=False, scale=4, elem_id="link")
        timeline_state = gr.State(None, time_to_live=STATE_LIFETIME)
        found_state = gr.State(None, time_to_live=STATE_LIFETIME)  # the latest Find result, a target for the Edit panel
        timer = gr.Timer(0.8, active=False)

        # --- the model loading in the background: the notice and buttons follow it, then the watch stops ---
        def model_status():
            buttons = [gr.Button(status.button_label(ex, label)) for label in status.BUTTONS]
            text = status.notice_text(ex)
            return gr.Markdown(text, visible=bool(text)), *buttons, gr.Timer(active=ex.model_state == "loading")

        model_watch.tick(model_status, None, [notice, generate, analyse, inspect_generate, find_btn, steer_edit.button, upload_edit.button,
                                              upload_steer, model_watch], api_name=False,
                         **BROWSE)

        # --- browse: list and latent page (atlas only, never queued behind the model) ---------------
        list_inputs = [query, sort, labelled, min_freq]
        search = shown(functools.partial(browse.table, ex, icon_cells))
        query.change(search, list_inputs, [table, summary], api_name="search", **BROWSE)
        for control in (sort, labelled, min_freq):
            control.change(search, list_inputs, [table, summary], api_name=False, **BROWSE)
        timeline_outputs = [timeline_state, step, x0_image, final_image, step_caption]
        page_outputs = [latent_box, header, icon_gallery, icon_note, top_gallery, patches, quantiles, histogram, profile, similar,
                        *timeline_outputs, map_request]

        def open_page(value):
            """The page with its map over time where it was drawn before; otherwise a placeholder where the map goes and a
            fresh request naming the latent, for the model (opening another page cancels a map still on its way)."""
            outputs = served_page(ex, value, pages).outputs()
            ex.page_served.set()
            drawn = browse.drawn_timeline_view(ex, value)
            if drawn is None:
                j = outputs[0]
                return *outputs, *browse.no_timeline(f"Drawing latent {j}'s map over time…"), f"{j}@{time.time_ns()}"
            return *outputs, *drawn, gr.skip()

        timeline_on_model = on_gpu(on_model(browse.timeline_view))

        def timeline_view(request):  # "j@…" from a page (or a latent id, through the API): a map drawn before is read here
            value = str(request).partition("@")[0]
            return browse.drawn_timeline_view(ex, value) or timeline_on_model(value)
        map_event = map_request.change(shown(timeline_view), map_request, timeline_outputs, api_name="map_over_time", **MODEL)
        opens_page = dict(cancels=[map_event], **BROWSE)  # so a map on its way cannot land under the next page

        def with_page(event):
            return event.then(shown(open_page), latent_box, page_outputs, api_name=False, **BROWSE)

        def page_from(select, fn, outputs):
            """A row's latent into the box (`fn`), then its page; the select cancels a map on its way (a cancel on the page's
            own `.then` would never fire: Gradio gives that cancel no event to follow)."""
            return with_page(select(fn, None, outputs, api_name=False, cancels=[map_event]))

        def row_latent(evt: gr.SelectData):
            return int(evt.row_value[0])

        def row_latent_to_browse(evt: gr.SelectData):
            return int(evt.row_value[0]), gr.Tabs(selected="browse"), "browse"

        open_btn.click(shown(open_page), latent_box, page_outputs, api_name="latent_page", **opens_page)
        latent_box.submit(shown(open_page), latent_box, page_outputs, api_name=False, **opens_page)
        page_from(table.select, row_latent, latent_box)
        page_from(similar.select, row_latent, latent_box)
        table_csv.click(shown(lambda: export.export_table(ex, "csv", exports)), None, exported, api_name="export_table_csv", **BROWSE)
        table_json.click(shown(lambda: export.export_table(ex, "json", exports)), None, exported, api_name="export_table_json", **BROWSE)
        find_btn.click(shown(on_gpu(on_model(find.find_latents))), [find_with, find_without, find_seeds],
                       [find_table, find_summary, found_state], api_name="find_latents", **MODEL)
        page_from(find_table.select, row_latent, latent_box)
        latent_json.click(shown(lambda j: export.export_latent(ex, j, exports)), latent_box, exported, api_name="export_latent", **BROWSE)
        step.change(shown(timeline.frame), [timeline_state, step], [x0_image, final_image, step_caption], api_name=False, **BROWSE)
        playing = gr.State(False)
        play.click(lambda on: (not on, gr.Timer(active=not on), "Pause" if not on else "▶ Play"), playing,
                   [playing, timer, play], api_name=False)
        timer.tick(timeline.next_index, [timeline_state, step], step, api_name=False, **BROWSE)

        # --- steer: live regeneration, last request wins, one model call at a time ---------------
        def wire_steer(button, fn, inputs, outputs, slot_controls, live, api_name):
            """The button steers; each slot's controls and every `live` event steer again, the last request winning."""
            steer_fn = shown(on_gpu(fn))
            shown_on = dict(show_progress_on=outputs[1])  # the steered image carries the progress bar, not every output
            button.click(steer_fn, inputs, outputs, api_name=api_name, **MODEL, **shown_on)
            triggers = list(live)
            for latent, position, mode, alpha in slot_controls:
                position.input(shown(strength_text), position, alpha, api_name=False, **BROWSE)
                triggers += [position.input, latent.submit, mode.input]
            for control in triggers:
                control(steer_fn, inputs, outputs, trigger_mode="always_last", api_name=False, **MODEL, **shown_on)
            return steer_fn

        steer_inputs = [prompt, seed, guidance, start, end, mask, cells, history_state] + [c for s in slots for c in s[:3]]
        steer_outputs = [base_image, steered_image, diff_image, history_state, history, applied]

        steer_on_model = on_model(steer.steer)

        def run_steer(*args):
            base, steered, diff, past, text = steer_on_model(*args)
            return base, steered, diff, past, past, text

        steer_fn = wire_steer(generate, run_steer, steer_inputs, steer_outputs, slots,
                              (prompt.submit, start.release, end.release, mask.input, cells.input, guidance.release, seed.submit), "steer")
        pin_btn.click(shown(steer.pin), history_state, [pinned_image, pinned_text], api_name=False, **BROWSE)

        # --- edit a concept: choosing a target edits; then every control, and `live` ones it shares, edits again -------
        def wire_edit(panel: EditPanel, fn, context, live, api_name):
            """`fn(*context, *the panel's controls)` runs on the button and on choosing a target; once an edit was made, every other
            control and the `live` events run it again. Returns that re-run (a no-op before any edit) and the inputs."""
            inputs, outputs = [*context, *panel.controls(found_state)], panel.outputs()
            edit_fn = shown(on_gpu(fn))

            def edit_if_made(made, *args):
                return edit_fn(*args) if made is not None else tuple(gr.skip() for _ in outputs)

            panel.button.click(edit_fn, inputs, outputs, api_name=api_name, **MODEL)
            for control in (panel.target.input, panel.target_ids.submit, panel.use_found.input):
                control(edit_fn, inputs, outputs, trigger_mode="always_last", api_name=False, **MODEL)
            for control in (panel.source.input, panel.source_ids.submit, panel.where.input, panel.automatic.input, *live):
                control(edit_if_made, [panel.made, *inputs], outputs, trigger_mode="always_last", api_name=False, **MODEL)
            (panel.strength.release(lambda: False, None, panel.automatic, trigger_mode="always_last", api_name=False, **BROWSE)  # by hand now
             .then(edit_if_made, [panel.made, *inputs], outputs, api_name=False, **MODEL))
            return edit_if_made, inputs

        edit_if_made, edit_inputs = wire_edit(steer_edit, on_model(edit.edit), [prompt, seed, guidance, start, end],
                                              (prompt.submit, seed.submit, guidance.release, start.release, end.release), "edit")

        def go_steer(value):
            j, pos, mode_value, text, seed_value = views.send_to_steer(ex, value)
            return gr.Tabs(selected="steer"), "steer", j, pos, mode_value, strength_text(pos), text, seed_value

        first = slots[0]
        (to_steer.click(shown(go_steer), latent_box, [tabs, current_tab, first[0], first[1], first[2], first[3], prompt, seed], api_name=False)
         .success(steer_fn, steer_inputs, steer_outputs, api_name=False, show_progress_on=steered_image, **MODEL))

        # --- your image: its reconstruction and latents, click through to their pages; edit and steer it --------------
        inspect_outputs = [inspected, inspect_table, inspect_maps, inspection]

        def with_upload(event):  # the upload and its note from the kept inspection: the API's outputs stay as they were
            return event.success(shown(lambda kept: kept.upload_outputs()), inspection, [uploaded, upload_note], api_name=False, **BROWSE)

        inspect_upload, inspect_prompt_run = on_model(inspect.inspect_upload), on_model(inspect.inspect_prompt)
        with_upload(analyse.click(shown(on_gpu(lambda image, text: inspect_upload(image, text).outputs())),
                                  [upload, upload_prompt], inspect_outputs, api_name="inspect_upload", **MODEL))
        with_upload(inspect_generate.click(shown(on_gpu(lambda text, s: inspect_prompt_run(text, s).outputs())),
                                           [inspect_prompt, inspect_seed], inspect_outputs, api_name="inspect_prompt", **MODEL))
        inspect_step.change(shown(inspect.gallery), [inspection, inspect_step], inspect_maps, api_name=False, **BROWSE)
        page_from(inspect_table.select, row_latent_to_browse, [latent_box, tabs, current_tab])
        wire_edit(upload_edit, on_model(your_image.edit_upload), [upload, upload_prompt, *upload_edit.window],
                  (upload_prompt.submit, *(slider.release for slider in upload_edit.window)), "edit_upload")
        wire_steer(upload_steer, on_model(your_image.steer_upload),
                   [upload, upload_prompt, upload_start, upload_end, upload_mask, upload_cells, *upload_slot[:3]],
                   [upload_base, upload_steered, upload_diff, upload_applied], [upload_slot],
                   (upload_start.release, upload_end.release, upload_mask.input, upload_cells.input), "steer_upload")
        stale = [upload_edit.base, upload_edit.edited, upload_edit.positions, upload_edit.caption, upload_base, upload_steered,
                 upload_diff, upload_applied]  # results of the previous upload, cleared when another is chosen
        upload.change(lambda: [None] * len(stale), None, stale, api_name=False, **BROWSE)

        # --- URL state ------------------------------------------------------------------------------
        for tab, name in ((browse_tab, "browse"), (steer_tab, "steer"), (inspect_tab, "inspect")):
            tab.select(lambda n=name: n, None, current_tab, api_name=False)

        def restore(request: gr.Request):
            try:
                view, edit_view = views.restore(ex, dict(request.query_params)), views.restore_edit(ex, dict(request.query_params))
            except ExplorerError as err:  # a broken link still opens the app, on the default view
                gr.Warning(str(err))
                view, edit_view = views.restore(ex, {}), views.restore_edit(ex, {})
            tab, latent, steered, pos, mode_value, text, seed_value = view
            *edit_controls, made = edit_view
            return (gr.Tabs(selected=tab), tab, latent, steered, pos, mode_value, strength_text(pos), text, seed_value, text,
                    *edit_controls, made, gr.Accordion(open=made is not None))

        def steer_if_asked(tab, *args):
            return steer_fn(*args) if tab == "steer" else tuple(gr.skip() for _ in steer_outputs)

        demo.load(None, None, None, js=MAP_CLICK_JS, api_name=False)
        edit_controls = [steer_edit.target, steer_edit.target_ids, steer_edit.source, steer_edit.source_ids, steer_edit.where,
                         steer_edit.strength, steer_edit.automatic, steer_edit.made]
        loaded = demo.load(restore, None, [tabs, current_tab, latent_box, *first, prompt, seed, inspect_prompt, *edit_controls, edit_accordion],
                           api_name=False)
        with_page(loaded)
        (loaded.then(search, list_inputs, [table, summary], api_name=False, **BROWSE)
         .then(steer_if_asked, [current_tab, *steer_inputs], steer_outputs, api_name=False, **MODEL)
         .then(edit_if_made, [steer_edit.made, *edit_inputs], steer_edit.outputs(), api_name=False, **MODEL))
        (link_btn.click(shown(views.link), [current_tab, latent_box, first[0], first[1], first[2], prompt, seed, steer_edit.made], link,
                        api_name=False)
         .then(None, link, link, js=COPY_LINK_JS, api_name=False))
    return demo
