"""Entry point: `python app.py` serves the explorer (a placeholder page until the UI lands)."""

import argparse

from ui.app import build_app


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    build_app().queue(default_concurrency_limit=1).launch(server_port=args.port, share=args.share)
