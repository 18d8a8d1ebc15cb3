"""The Your image tab's Edit and Steer panels: an upload edited or steered from the run that reproduces it
(`Generator.edit_image`, `Generator.steer_image`), its controls checked by the Steer tab's code."""

from PIL import Image

from ui import edit, steer
from ui.explorer import Explorer
from ui.images import difference, upscale
from ui.inspect import read_upload, upload_note


def edit_upload(ex: Explorer, path, prompt, start, end, target, target_ids, use_found, found, source, source_ids, where, strength,
                automatic) -> tuple[Image.Image, Image.Image, Image.Image, str, float, bool, dict]:
    """A concept edited into the upload, as `edit.edit` shows it (the reconstruction as the base), with the reconstruction's note."""
    asked = edit.edit_request(ex, start, end, target, target_ids, use_found, found, source, source_ids, where, strength, automatic)
    image, prompt = read_upload(path, prompt)
    result = ex.generator().edit_image(image, asked.target, asked.source, prompt, asked.strength, asked.window, asked.place)
    base, edited, positions, caption, *rest = asked.outputs(result)
    return base, edited, positions, f"{caption}\n\n{upload_note(image, result.base_run)}", *rest


def steer_upload(ex: Explorer, path, prompt, start, end, mask, cells, latent, position, mode
                 ) -> tuple[Image.Image, Image.Image, Image.Image, str]:
    """The reconstruction, the upload steered by one latent (as on the Steer tab), their difference and what was applied, with
    the reconstruction's note."""
    asked = steer.steering_of(ex, start, end, mask, cells, (latent, position, mode))
    image, prompt = read_upload(path, prompt)
    result = ex.generator().steer_image(image, asked.steers, prompt, asked.window, asked.mask)
    return (upscale(result.base), upscale(result.steered), difference(result.base, result.steered),
            f"{asked.summary}\n\n{upload_note(image, result.base_run)}")
