"""What a visitor does in the app, each timed once warm, on any bundle and model: the check that a bundle serves.

    python -m bench.bench_app_actions [--bundle checkpoints/shapes-bundle] [--model PATH] [--device cpu]

Opens the explorer as `python app.py` does and calls the handlers the app's events call: a latent
page (atlas only), the map over denoising time of its top image (a base run, decoded through
the VAE when the model has one), a steer from step 0, an upload through Your image (the image
encoded, DDIM-inverted and reproduced by the held run) and an image generated there. Prints the
seconds of each, after one untimed latent page, and the machine. The baseline is the base run
alone (a plain generation of the same prompt and seed in the same run): each model action is
given as a multiple of it.
"""

import argparse
import tempfile
import time
from pathlib import Path

from app import DEFAULT_BUNDLE
from bench.common import device_name
from ui import browse, inspect, steer
from ui.explorer import open_explorer


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE)
    parser.add_argument("--model", default=None, help="model directory or hub id (default: the bundle's)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)

    seconds, ex = timed(lambda: open_explorer(args.bundle, args.model, args.device))
    if ex.model_state != "ready":
        raise SystemExit(f"no model: {ex.notice}")
    latent = int(ex.table.frequency.argmax())
    prompt, seed = browse.top_image_of(ex, latent)
    browse.latent_page(ex, latent + 1 if latent + 1 < len(ex.table.frequency) else 0)  # warm-up
    rows = {"open bundle and model": seconds}
    rows["latent page"], _ = timed(lambda: browse.latent_page(ex, latent))
    rows["base run (the baseline)"], base = timed(lambda: ex.generator().base(prompt, seed + 1))
    rows["map over time of the top image"], line = timed(lambda: browse.timeline_view(ex, latent))
    controls = (str(latent), 0.5, "add", "", 0.0, "add", "", 0.0, "add")
    rows["steer from step 0 (base cached)"], _ = timed(
        lambda: steer.steer(ex, prompt, seed, ex.generator().default_guidance, 0, ex.num_steps - 1, "everywhere", [], [], *controls))
    with tempfile.TemporaryDirectory() as folder:
        upload = Path(folder) / "upload.png"
        base.image.save(upload)
        rows["Your image: upload (encode, inversion, held run)"], _ = timed(lambda: inspect.inspect_upload(ex, str(upload), prompt))
    rows["Your image: generate (base cached)"], _ = timed(lambda: inspect.inspect_prompt(ex, prompt, seed + 1))

    frames = len(line[0].frames) if line[0] is not None else 0
    print(f"device: {device_name()}; bundle {args.bundle}: {len(ex.table.frequency)} latents, {frames} recorded steps, "
          f"images {base.image.size[0]} px, VAE: {'yes' if ex.bundle.generator.model.vae is not None else 'no (pixel space)'}")
    baseline = rows["base run (the baseline)"]
    print(f"{'action':<48}{'seconds':>10}{'× base run':>12}")
    for name, value in rows.items():
        print(f"{name:<48}{value:>10.2f}{value / baseline:>12.2f}")


if __name__ == "__main__":
    main()
