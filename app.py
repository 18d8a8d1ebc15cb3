"""Entry point: `python app.py` serves the explorer on the shipped demo bundle (or `--bundle`, `--model`)."""

import argparse
import ctypes
import logging
import os
import sys

from backend.errors import ExplorerError

DEFAULT_BUNDLE = "checkpoints/shapes-bundle"


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options of the app; a Hugging Face Space, which runs `python app.py` bare, sets them as variables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", default=os.environ.get("SAE_BUNDLE", DEFAULT_BUNDLE),
                        help="bundle directory or Hugging Face Hub repo id (default: $SAE_BUNDLE, else the demo)")
    parser.add_argument("--model", default=os.environ.get("SAE_MODEL"),
                        help="model directory or hub id (default: $SAE_MODEL, else the model the bundle names)")
    parser.add_argument("--device", default=os.environ.get("SAE_DEVICE"), help="cpu or cuda (default: $SAE_DEVICE, else cuda when available)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    return parser.parse_args(argv)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before the server's threads start.

    Each worker thread otherwise gets its own arena, and the resident memory of a server with
    many users creeps up (bench_load, 5 rounds of 20 clients: +24 % uncapped, +9 % capped).
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to cap
        pass


def main(argv=None) -> None:
    """Load the bundle, start serving (browsing works), then load the model while the server answers."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    limit_malloc_arenas()
    from ui.app import LAUNCH, build_app
    from ui.explorer import FIRST_PAGE_GRACE, open_explorer
    from ui.map_files import MapFiles
    from ui.page_files import PageFiles, predraw
    from ui.worker import ModelWorker, in_process

    try:
        explorer = open_explorer(args.bundle, defer_model=True)
    except ExplorerError as err:
        hint = " The demo bundle ships in checkpoints/; pass --bundle PATH otherwise." if args.bundle == DEFAULT_BUNDLE else ""
        sys.exit(f"Cannot open bundle: {err}{hint}")
    pages = PageFiles.of(explorer.bundle)
    explorer.maps = MapFiles.of(pages.root, explorer.bundle, args.model)
    worker = None if in_process() else ModelWorker(explorer, args.model, args.device)  # loads the model in its own process
    demo = build_app(explorer, pages, worker).queue(default_concurrency_limit=1)
    demo.launch(server_port=args.port, share=args.share, prevent_thread_lock=True, **LAUNCH)
    predraw(explorer, pages)  # the latent pages not drawn yet, in a low-priority child process
    if worker is None:
        explorer.load_model(args.model, args.device, grace=FIRST_PAGE_GRACE)  # generation requests wait for it; browsing does not
        logging.getLogger(__name__).info("model %s", explorer.model_state)
    demo.block_thread()


if __name__ == "__main__":
    main()
