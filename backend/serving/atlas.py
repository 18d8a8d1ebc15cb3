"""The atlas: per-latent statistics, exact top images and patches, and their maps, built in one streaming pass."""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

HISTOGRAM_BINS = 20
IMAGE_WIDE = 0.25  # a latent that fires on more than this share of an image's positions, on average over the images where it fires


class AtlasAccumulator:
    """Folds dense codes of whole images, Tensor[B, P, n_latents], into the atlas tables.

    Its state is a dict of tensors, so a build can save it after every shard and resume.
    """

    def __init__(self, n_latents: int, n_images: int, positions: int, top_n: int = 16):
        self.state = {
            "fire_count": torch.zeros(n_latents, dtype=torch.long),  # positions where z_j > 0
            "code_sum": torch.zeros(n_latents, dtype=torch.float64),
            "code_max": torch.zeros(n_latents),
            "image_max": torch.zeros(n_images, n_latents),  # max-pooled codes per image
            "top_image_score": torch.full((n_latents, top_n), -1.0),
            "top_image_id": torch.full((n_latents, top_n), -1, dtype=torch.long),
            "top_image_map": torch.zeros(n_latents, top_n, positions),
            "top_patch_score": torch.full((n_latents, top_n), -1.0),
            "top_patch_image": torch.full((n_latents, top_n), -1, dtype=torch.long),
            "top_patch_position": torch.full((n_latents, top_n), -1, dtype=torch.long),
            "positions_seen": torch.zeros((), dtype=torch.long),
            "images_done": torch.zeros(n_images, dtype=torch.bool),
        }

    def update(self, image_ids: Tensor, codes: Tensor) -> None:
        """Add whole images: `image_ids` [B], `codes` [B, P, n_latents] (non-negative, sparse)."""
        s = self.state
        b, p, n = codes.shape
        top_n = s["top_image_id"].shape[1]
        s["fire_count"] += (codes > 0).sum((0, 1))
        s["code_sum"] += codes.sum((0, 1)).double()
        s["code_max"] = torch.maximum(s["code_max"], codes.amax((0, 1)))
        s["positions_seen"] += b * p
        image_max = codes.amax(1)  # [B, n]
        s["image_max"][image_ids] = image_max
        s["images_done"][image_ids] = True

        # Top images: merge the running top-N with this batch, per latent, carrying the maps along.
        scores = torch.cat([s["top_image_score"], image_max.T], 1)  # [n, N + B]
        ids = torch.cat([s["top_image_id"], image_ids.expand(n, b)], 1)
        maps = torch.cat([s["top_image_map"], codes.permute(2, 0, 1)], 1)  # [n, N + B, P]
        best = scores.topk(top_n, dim=1).indices
        s["top_image_score"] = scores.gather(1, best)
        s["top_image_id"] = ids.gather(1, best)
        s["top_image_map"] = maps.gather(1, best[:, :, None].expand(-1, -1, p))

        # Top patches: the same merge over (image, position) pairs.
        flat = codes.permute(2, 0, 1).reshape(n, b * p)
        scores = torch.cat([s["top_patch_score"], flat], 1)
        images = torch.cat([s["top_patch_image"], image_ids.repeat_interleave(p).expand(n, -1)], 1)
        positions = torch.cat([s["top_patch_position"], torch.arange(p).repeat(b).expand(n, -1)], 1)
        best = scores.topk(top_n, dim=1).indices
        s["top_patch_score"], s["top_patch_image"], s["top_patch_position"] = (t.gather(1, best) for t in (scores, images, positions))

    def finish(self) -> dict[str, Tensor]:
        """The atlas tables: stats per latent, top images with maps, top patches, per-image profiles."""
        s = self.state
        fired = s["fire_count"].clamp_min(1)
        valid = s["top_image_score"] > 0
        typical = (s["top_image_score"].clamp_min(0).sum(1) / valid.sum(1).clamp_min(1)).float()
        # Histogram of per-image max activation, in bins from 0 to the latent's max.
        edges_top = s["code_max"].clamp_min(1e-12)
        bins = (s["image_max"] / edges_top * HISTOGRAM_BINS).long().clamp_max(HISTOGRAM_BINS - 1)
        histogram = torch.zeros(bins.shape[1], HISTOGRAM_BINS, dtype=torch.long)
        active = s["image_max"] > 0
        histogram.scatter_add_(1, bins.T, active.T.long())
        return {
            "frequency": s["fire_count"].float() / s["positions_seen"].clamp_min(1).float(),
            "mean": (s["code_sum"] / fired).float(),
            "max": s["code_max"],
            "typical": typical,
            "histogram": histogram,
            "image_profile": s["image_max"],
            "top_image_id": s["top_image_id"],
            "top_image_score": s["top_image_score"],
            "top_image_map": s["top_image_map"],
            "top_patch_image": s["top_patch_image"],
            "top_patch_position": s["top_patch_position"],
            "top_patch_score": s["top_patch_score"],
        }


@dataclass(frozen=True)
class TemporalProfiles:
    """Per latent and recorded step, norms in units of the activation scale at that step (√E‖a_t‖²).

    The scale falls ~10x over the schedule at up_ft1, so raw norms would make almost every
    latent "peak" at step 0; relative to it, a profile says how much of a typical activation
    one unit of the latent moves at each step.
    """

    trajectory: Tensor  # [n, T] ‖φ_j,t‖ / scale_t
    injected: Tensor  # [n, T] ‖c_t·D_j,t‖ / scale_t: what step t's own block writes; the rest is carried by the dynamics
    residual_share: Tensor  # [n] share of the relative profile's energy injected directly rather than carried by the dynamics

    @property
    def peak_index(self) -> Tensor:
        """Index of each latent's largest relative step: Tensor[n]."""
        return self.trajectory.argmax(1)


def temporal_profiles(feature_trajectories: Tensor, block_deltas: Tensor, activation_scale: Tensor) -> TemporalProfiles:
    """Profiles of φ [n, T, C] and of the block deltas c_t·D_j,t [n, T, C], relative to `activation_scale` [T]."""
    trajectory, injected = feature_trajectories.norm(dim=2) / activation_scale, block_deltas.norm(dim=2) / activation_scale
    # In the same relative units: raw energy would be all step 0's, where φ_1 = δr_1 is injected by definition.
    residual_share = injected.pow(2).sum(1) / trajectory.pow(2).sum(1).clamp_min(1e-12)
    return TemporalProfiles(trajectory=trajectory, injected=injected, residual_share=residual_share.clamp_max(1.0))


def image_spread(frequency: Tensor, histogram: Tensor, n_images: int) -> Tensor:
    """Per latent: the mean share of an image's positions where it fires, over the atlas images where it fires.

    `frequency` is the share of all `n_images` images' positions and the histogram counts the images
    where it fired, so frequency × n_images / images fired is that mean (0 for dead latents). Above
    IMAGE_WIDE a latent covers a quarter of every image it fires on: it marks images, not places.
    """
    images_fired = histogram.sum(1).float()
    return frequency.float() * n_images / images_fired.clamp_min(1)


def label_precision(image_max: Tensor, image_factors: Sequence[dict[str, str]], labels: Sequence[dict]) -> Tensor:
    """Per latent: of its strongest code in each atlas image, summed over the images, the share on images with its label's value.

    A label reads the latent's top 16 images (`label_latents`); this reads every image it fires
    on, weighted by how strongly, so a latent that fires on every image is not called pure because
    its strongest images agree. Images whose prompt does not name the label's factor are left out;
    unlabelled latents get 0.
    """
    precision = torch.zeros(len(labels))
    labelled = [(j, label["factor"], label["value"]) for j, label in enumerate(labels) if label.get("factor")]
    values = {(factor, value) for _, factor, value in labelled}
    named = {factor: torch.tensor([factor in f for f in image_factors]) for factor, _ in values}
    has_value = {(factor, value): torch.tensor([f.get(factor) == value for f in image_factors]) for factor, value in values}
    for j, factor, value in labelled:
        weights = image_max[:, j].float() * named[factor]
        precision[j] = (weights * has_value[factor, value]).sum() / weights.sum().clamp_min(1e-12)
    return precision


def label_latents(top_image_id: Tensor, top_image_score: Tensor, image_factors: Sequence[dict[str, str]],
                  min_images: int = 3, min_enrichment: float = 0.25) -> list[dict]:
    """Per latent: the factor value most enriched among its top images, with its purity.

    Enrichment is purity minus the value's base rate over all atlas images, so a latent is not
    labelled "black background" just because most images have one; below `min_enrichment`
    (what 16 random images reach by chance) a latent stays unlabelled. Images whose prompt does
    not name a factor do not count for that factor.
    """
    factors = sorted({name for f in image_factors for name in f})
    base = {name: Counter(f[name] for f in image_factors if name in f) for name in factors}
    labels = []
    for ids, scores in zip(top_image_id.tolist(), top_image_score.tolist()):
        tops = [image_factors[i] for i, score in zip(ids, scores) if i >= 0 and score > 0]
        best = {"factor": None, "value": None, "purity": 0.0, "enrichment": 0.0, "support": len(tops)}
        for name in factors:
            named = [f[name] for f in tops if name in f]
            if len(named) < min_images:
                continue
            value, count = Counter(named).most_common(1)[0]
            purity = count / len(named)
            enrichment = purity - base[name][value] / sum(base[name].values())
            if enrichment >= min_enrichment and enrichment > best["enrichment"]:
                best.update(factor=name, value=value, purity=purity, enrichment=enrichment)
        labels.append(best)
    return labels
