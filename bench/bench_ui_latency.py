"""Latency of a latent page with its pictures, through the served app, against drawing and encoding it on every open.

    python -m bench.bench_ui_latency [--bundle checkpoints/shapes-bundle] [--latents 30]

The app keeps each latent's page once drawn and writes its pictures once as PNG files that Gradio
serves as they are (ui/image_files.py). The baseline, served by the same process in the same run,
is the earlier path: the page drawn on every open and its PIL pictures encoded into Gradio's
cache by Gradio. Pictures are fetched as a browser does (one keep-alive connection per worker, 6
at a time) and, for comparison, as gradio_client does (one at a time, a new connection each).
A latent page reads only the atlas; no model call is timed. Prints medians, p90s, the ratio of
the served page with pictures to the baseline, and the CPU it ran on. The client runs in the
server's process, as the other benchmarks do; the floor row is Gradio's own cost per event here.
"""

import argparse
import statistics
from concurrent.futures import ThreadPoolExecutor

import gradio as gr
import httpx
from gradio_client import Client

from app import DEFAULT_BUNDLE
from bench.common import device_name, free_port, percentile, time_calls
from ui import browse
from ui.app import LAUNCH, build_app
from ui.explorer import open_explorer
from ui.image_files import temporary_folder
from ui.page_files import PageFiles

BROWSER_CONNECTIONS = 6  # what browsers open per host


def timed(fn, latents: list[int]) -> list[float]:
    """Seconds per call of fn(j), one call per latent, in order."""
    calls = iter(latents)
    return time_calls(lambda: fn(next(calls)), repeats=len(latents), warmup=0)


def summary(times: list[float]) -> tuple[float, float]:
    """Median and 90th percentile, in milliseconds."""
    return statistics.median(times) * 1e3, percentile(times, 90) * 1e3


def picture_urls(outputs) -> list[str]:
    """The URLs of the pictures in a latent page's outputs (its three galleries)."""
    return [item["image"]["url"] for gallery in outputs[2:5] for item in gallery]


def browser_fetch(client: Client, http: httpx.Client, pool: ThreadPoolExecutor, api_name: str):
    """A page's data, then its pictures fetched BROWSER_CONNECTIONS at a time over kept-alive connections."""
    def page(j: int) -> None:
        outputs = client.predict(j, api_name=api_name)
        for response in pool.map(http.get, picture_urls(outputs)):
            response.raise_for_status()
    return page


def baseline_app(ex) -> gr.Blocks:
    """The earlier path: every open draws the page and Gradio encodes its PIL pictures; and a floor, an event doing nothing."""
    with gr.Blocks() as demo:
        box = gr.Number()
        outputs = [gr.Number(), gr.Markdown(), gr.Gallery(), gr.Gallery(), gr.Gallery(), gr.Plot(), gr.Plot(), gr.Dataframe()]
        box.submit(lambda j: browse.latent_page(ex, j).outputs(), box, outputs, api_name="latent_page", concurrency_limit=None)
        box.change(lambda j: j, box, outputs[0], api_name="nothing", concurrency_limit=None)
    return demo


def serve(demo: gr.Blocks) -> gr.Blocks:
    demo.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, **LAUNCH)
    return demo


def main(argv=None) -> None:
    """Serve the app and the baseline, time latent pages every way, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE)
    parser.add_argument("--latents", type=int, default=30, help="how many latents to open (the most frequent ones)")
    args = parser.parse_args(argv)

    ex = open_explorer(args.bundle, model_source=None)
    latents = [int(j) for j in ex.table.frequency.argsort()[::-1][1: args.latents + 1]]  # not the default latent: pre-drawn
    rows = {}
    with httpx.Client() as http, ThreadPoolExecutor(BROWSER_CONNECTIONS) as pool:
        for name, demo in (("app", serve(build_app(ex, PageFiles(temporary_folder("pages"))))), ("baseline", serve(baseline_app(ex)))):
            try:
                client = Client(demo.local_url, verbose=False, download_files=False)
                page = browser_fetch(client, http, pool, "/latent_page")
                if name == "app":
                    rows["app: first open, pictures as a browser fetches them"] = timed(page, latents)
                    rows["app: reopened, pictures as a browser fetches them"] = timed(page, latents)
                    rows["app: reopened, data only"] = timed(lambda j: client.predict(j, api_name="/latent_page"), latents)
                    downloading = Client(demo.local_url, verbose=False, download_files=True)
                    rows["app: reopened, pictures via gradio_client"] = timed(
                        lambda j: downloading.predict(j, api_name="/latent_page"), latents)
                else:
                    rows["baseline: pictures as a browser fetches them"] = timed(page, latents)
                    rows["baseline: data only"] = timed(lambda j: client.predict(j, api_name="/latent_page"), latents)
                    rows["floor: an event returning its input"] = timed(lambda j: client.predict(j, api_name="/nothing"), latents)
            finally:
                demo.close()
    rows["handler in-process (draws the page)"] = timed(lambda j: browse.latent_page(ex, j), latents)

    medians = {name: summary(times) for name, times in rows.items()}
    print(f"device: {device_name()} ({len(latents)} latents of {args.bundle})")
    print(f"{'path':<58}{'median ms':>12}{'p90 ms':>12}")
    for name, (median, p90) in medians.items():
        print(f"{name:<58}{median:>12.1f}{p90:>12.1f}")
    baseline = medians["baseline: pictures as a browser fetches them"][0]
    for name in ("app: first open, pictures as a browser fetches them", "app: reopened, pictures as a browser fetches them"):
        print(f"speed-up over the baseline, {name[5:]} (median): {baseline / medians[name][0]:.2f}x")


if __name__ == "__main__":
    main()
