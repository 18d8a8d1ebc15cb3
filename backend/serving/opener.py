"""Opening a bundle for serving: the bundle must load; its model may fail, which only switches generation off."""

import logging
from dataclasses import dataclass

from backend.serving.bundle import Bundle

log = logging.getLogger(__name__)

SLOW_ON_CPU = 200_000_000  # UNet parameters above which CPU generation takes minutes (SD 1.5 has 860M)


@dataclass
class OpenedBundle:
    """A loaded bundle, its model attached when it could be loaded, and a notice saying what is off or slow."""

    bundle: Bundle
    notice: str = ""


def attach_model(bundle: Bundle, model_source: str | None = None, device: str | None = None) -> str:
    """Load the bundle's model (or `model_source`) and attach it; returns the notice to show (empty when all is well).

    Without `model_source` the bundle's own model is loaded, and only when its weight files have
    the sha256 the build recorded; `model_source` is the explicit choice of other weights. Errors
    only switch generation off. diffusers is imported here, not before: the server starts first.
    """
    from backend.diffusion.models import check_weight_digests, load_model

    source = model_source or bundle.manifest["model"]["source"]
    try:
        model = load_model(source, device=device or None)  # first: a hub model is in the local cache after it
        if model_source is None:  # the bundle's own model: the weights it was built with, or nothing
            check_weight_digests(source, bundle.manifest["model"].get("files", {}))
    except Exception as err:  # a model that cannot load only switches generation off (a bad --device, too)
        log.warning("generation off: %s", err)  # the server's log says which path and why; visitors are not told local paths
        return "Generation is off: the model could not be loaded (the server's log says why). Browsing works from the atlas."
    bundle.attach_model(model)
    size = sum(p.numel() for p in model.unet.parameters())
    if model.device.type != "cuda" and size > SLOW_ON_CPU:
        return f"No GPU: this {size / 1e6:.0f}M-parameter model runs on the CPU, so each generation takes minutes. Browsing is instant."
    return ""


def open_bundle(bundle_source: str, model_source: str | None = None, device: str | None = None) -> OpenedBundle:
    """Load the bundle (errors are fatal) and its model (errors only switch generation off, with a notice)."""
    bundle = Bundle.load(bundle_source)
    return OpenedBundle(bundle, notice=attach_model(bundle, model_source, device))
