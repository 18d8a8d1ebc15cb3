"""Where and when latents fire, measured against the shapes world's ground truth (issue: global and local features).

Object masks come from the factor classifier's soft mask of each generated image, pooled to the
site's grid. Global latents (global_local bundles) have one code per image and no place, so the
spatial measures read local latents only.
"""

import statistics

import torch
import torch.nn.functional as F
from torch import Tensor

from backend.serving.atlas import IMAGE_WIDE
from backend.shapes.classify import analyse

OBJECT_FACTORS = ("colour", "shape", "size")
LABEL_GROUPS = ("object", "background", "position", "unlabelled")


def object_masks(thumbnails: Tensor, grid: tuple[int, int]) -> Tensor:
    """Bool Tensor[B, H*W]: grid cells more than half covered by the object, from uint8 images Tensor[B, h, w, 3]."""
    alpha = analyse(thumbnails.permute(0, 3, 1, 2).float() / 255)["alpha"]
    return (F.interpolate(alpha[:, None], size=tuple(grid), mode="area")[:, 0] > 0.5).flatten(1)


def label_group(label: dict) -> str:
    factor = label.get("factor")
    return "object" if factor in OBJECT_FACTORS else factor if factor in LABEL_GROUPS else "unlabelled"


def localization(codes: Tensor, masks: Tensor, labels: list[dict], is_global: Tensor, paired: Tensor | None = None) -> dict:
    """Code mass on object positions against chance, per label group and per object factor, and the mass of image-wide
    latents (with `paired`, bool per latent: also the part of it carried by signed pairs, Bundle.signed_pairs).

    `codes` Tensor[B, P, n] of B whole images, `masks` Tensor[B, P]. A latent's object share is its
    code mass on object positions over all its mass; chance is the share of positions on the object.
    """
    codes = codes.float()
    mass = codes.sum((0, 1))
    on_object = (codes * masks[..., None]).sum((0, 1))
    chance = float(masks.float().mean())
    measured = (mass > 0) & ~is_global

    def median_ratio(belongs) -> dict:
        members = [j for j in measured.nonzero().flatten().tolist() if belongs(labels[j])]
        shares = [float(on_object[j] / mass[j]) for j in members]
        return {"latents": len(members), "median_ratio": statistics.median(shares) / chance if shares else None}

    groups = {name: median_ratio(lambda label, name=name: label_group(label) == name) for name in LABEL_GROUPS}
    factors = {name: median_ratio(lambda label, name=name: label.get("factor") == name) for name in OBJECT_FACTORS}
    fired_share = (codes > 0).float().mean(1)  # [B, n]: share of each image's positions where the latent fired
    images_fired = (fired_share > 0).sum(0)
    mean_share = fired_share.sum(0) / images_fired.clamp_min(1)
    image_wide = measured & (mean_share > IMAGE_WIDE)
    total = mass[measured].sum().clamp_min(1e-12)
    result = {"object_share_chance": chance, "groups": groups, "object_factors": factors, "image_wide_latents": int(image_wide.sum()),
              "image_wide_mass_share": float(mass[image_wide].sum() / total)}
    if paired is not None:
        result["image_wide_paired_mass_share"] = float(mass[image_wide & paired].sum() / total)
    return result


DAAM_THRESHOLD = 0.4  # DAAM (Tang et al. 2023) binarizes each attribution map at 0.4 of its maximum; its mIoU is 0.59-0.65


def map_iou(top_image_id: Tensor, top_image_map: Tensor, atlas_masks: Tensor, latents: list[int], relative: float = 0.0) -> float | None:
    """Median over `latents` of the mean IoU of the latent's binarized map with the object on its top images (None without
    such latents: results are JSON, where NaN would not equal itself on a rerun).

    A map is binarized at code > `relative` × its maximum: 0 (code > 0) or DAAM_THRESHOLD, DAAM's rule, so the number
    reads against attribution maps.
    """
    per_latent = []
    for j in latents:
        ious = []
        for i, z in zip(top_image_id[j].tolist(), top_image_map[j].float()):
            if i < 0 or not (z > 0).any():
                continue
            fired, mask = z > relative * z.max(), atlas_masks[i]
            ious.append(float((fired & mask).sum() / (fired | mask).sum()))
        if ious:
            per_latent.append(statistics.fmean(ious))
    return statistics.median(per_latent) if per_latent else None


def label_map_iou(codes: Tensor, masks: Tensor, labels: list[dict], is_global: Tensor, readings: list[dict], factor: str,
                  relative: float = DAAM_THRESHOLD) -> float | None:
    """Mean over images of the IoU with the object of the map its own `factor` label draws: the codes of every local
    latent labelled `factor = <the value read from that image>`, summed per position and binarized at `relative` × the
    sum's maximum (an empty map counts 0). One label's code is spread over several latents, so this is a label's map, not
    a latent's. Images whose value no latent carries, or with no object cell, are left out; None without any."""
    ious = []
    for z, mask, reading in zip(codes.float(), masks, readings):
        members = [j for j, label in enumerate(labels)
                   if label.get("factor") == factor and label.get("value") == reading[factor] and not is_global[j]]
        if not members or not mask.any():
            continue
        summed = z[:, members].sum(1)
        fired = summed > relative * summed.max() if summed.max() > 0 else torch.zeros_like(mask)
        ious.append(float((fired & mask).sum() / (fired | mask).sum()))
    return statistics.fmean(ious) if ious else None


def temporal_structure(profile: Tensor, alive: Tensor) -> dict:
    """Effective number of steps per latent (exp of the entropy of its normalized profile) and where profiles peak.

    `profile` Tensor[n, T] is ‖φ_t‖ relative to the activation scale at each step; `alive` selects latents that fired.
    """
    profile = profile[alive].double().clamp_min(0)
    p = profile / profile.sum(1, keepdim=True).clamp_min(1e-12)
    effective = (-(p * p.clamp_min(1e-300).log()).sum(1)).exp()
    peaks = torch.bincount(profile.argmax(1), minlength=profile.shape[1])
    return {"effective_steps_median": float(effective.median()) if len(effective) else None,
            "peak_step_counts": peaks.tolist()}
