"""Results to take away: the latent table as CSV or JSON, and one latent's page as a JSON record (atlas only)."""

import csv
import json
import os
import threading
from pathlib import Path

from ui.browse import PER_BIN, QUANTILE_BINS, SIMILAR_N, TOP_N, latent_id
from ui.explorer import Explorer

FORMATS = ("csv", "json")
TABLE_FIELDS = ["latent", "kind", "label", "effect", "effect_agrees", "purity", "precision", "frequency", "spread", "image_share",
                "max_activation", "mean_activation", "typical_activation", "peak_step", "residual_share"]


def table_records(ex: Explorer) -> list[dict]:
    """One record per latent, unrounded; `peak_step` is the sampler step where its profile relative to the activation scale peaks,
    `spread` the mean share of an image's positions where it fires and `image_share` the share of atlas images it fires on."""
    table, atlas, profiles = ex.table, ex.bundle.atlas, ex.bundle.temporal_profiles
    return [{"latent": j, "kind": table.kinds[j], "label": table.labels[j], "effect": table.effects[j], "effect_agrees": table.agreement[j],
             "purity": float(table.purity[j]), "precision": float(table.precision[j]), "frequency": float(table.frequency[j]),
             "spread": float(table.spread[j]), "image_share": float(table.image_share[j]),
             "max_activation": float(table.max_activation[j]), "mean_activation": float(atlas["mean"][j]),
             "typical_activation": float(ex.bundle.typical_activation[j]), "peak_step": int(table.peak_step[j]),
             "residual_share": float(profiles.residual_share[j])} for j in range(len(table.labels))]


def latent_record(ex: Explorer, value) -> dict:
    """Latent j's page as data: its table record, top images and patches, examples by quantile, profile and similar latents."""
    bundle = ex.bundle
    j = latent_id(ex, value)
    images = bundle.images
    profiles = bundle.temporal_profiles
    return {
        **table_records(ex)[j],
        "bundle": str(bundle.root.name),
        "top_images": [{"image": i, "score": score, "prompt": images[i]["prompt"], "seed": int(images[i]["seed"])}
                       for i, score in bundle.top_images(j, TOP_N)],
        "top_patches": [{"image": i, "row": r, "col": c, "score": score} for i, r, c, score in bundle.top_patches(j, TOP_N)],
        "quantile_images": [{"bin": b, "image": i, "score": score} for b, i, score in bundle.quantile_images(j, QUANTILE_BINS, PER_BIN)],
        "profile": {"recorded_steps": ex.recorded_steps,
                    "trajectory_per_unit_code": profiles.trajectory[j].tolist(),
                    "injected_per_unit_code": profiles.injected[j].tolist(),
                    "units": "norm divided by the activation scale at each step (sqrt E|a_t|^2)"},
        "similar_latents": [{"latent": k, "cosine": cos} for k, cos in bundle.similar_latents(j, SIMILAR_N)],
    }


def write_atomically(path: Path, write) -> str:
    """`write(file)` into a temporary file, then renamed to `path`: a reader never sees half a file. Returns the path as
    the string Gradio's File component takes."""
    partial = path.with_suffix(f"{path.suffix}.{threading.get_ident()}.part")
    with open(partial, "w", newline="", encoding="utf-8") as file:
        write(file)
    os.replace(partial, path)
    return str(path)


def export_table(ex: Explorer, fmt: str, folder: Path) -> str:
    """The latent table as `folder`/latents.csv or latents.json."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    records = table_records(ex)
    if fmt == "json":
        return write_atomically(Path(folder) / "latents.json", lambda f: json.dump(records, f, indent=1))

    def write_csv(file):
        writer = csv.DictWriter(file, fieldnames=TABLE_FIELDS)
        writer.writeheader()
        writer.writerows(records)

    return write_atomically(Path(folder) / "latents.csv", write_csv)


def export_latent(ex: Explorer, value, folder: Path) -> str:
    """Latent j's record as `folder`/latent-<j>.json."""
    record = latent_record(ex, value)
    return write_atomically(Path(folder) / f"latent-{record['latent']}.json", lambda f: json.dump(record, f, indent=1))
