"""Where a factor's own signal lies in the rows an SAE reads, against where the SAE's latents put their code.

Issue 26 asks object-labelled latents to put 2.5 × chance of their code on the object. This asks how much of
each factor's signal the rows themselves carry on the object. A factor's signal among a group of positions is the
spread of the rows' means between the factor's values, √Σ_v p_v ‖μ_v − m‖² with m = Σ_v p_v μ_v, in the rows' units
(a linear amplitude, as code mass is). The means come from two halves of the images and meet in an inner product,
Σ_v p_v ⟨μ_v − m, μ'_v − m'⟩: the noise of finite means, independent between the halves, adds nothing on average
given the counts (values seen in one half only are left out, p renormalized over the rest). What it leaves is noise
of either sign, measured by shuffling the values across images: an on-object spread not above `CLEAR` of its standard
deviations is not clear. The amplitude, the square root of a spread clamped at 0, still reads noise as a little signal.
Positions are grouped by their distance to the object in cells (0 = on it, then 1, 2, … up to `FAR` or more), and
the ratio to chance is the on-object amplitude over the mean amplitude at all positions (the object's share of the
amplitude times positions, over its share of the positions). A latent that carried exactly a factor's mean signal
would sit at that ratio.

`python -m backend.evaluation.factor_signal BUNDLE --trajectories DIR` prints, for trajectories a collect stage
wrote at the bundle's site, the signal's ratio in the activations and in the bundle's rows beside its latents' own.
"""

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor

from backend.errors import ExplorerError
from backend.evaluation.evaluate import test_trajectories
from backend.evaluation.localization import OBJECT_FACTORS, localization, object_masks
from backend.method.encodings import DENSE_VARIANTS, TrajectoryEncoding
from backend.serving.bundle import Bundle
from backend.shapes.classify import load_classifier

FAR = 4  # cells: positions this far from the object or farther form one group
FACTORS = (*OBJECT_FACTORS, "position", "background")
SHUFFLES = 32  # shuffles of the values across images that measure the on-object spread's noise
CLEAR = 3.0  # an on-object spread above this many noise standard deviations is clear


def distance_to_object(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """Long Tensor[B, H*W]: each cell's distance in cells (Chebyshev) to the nearest object cell, capped at FAR; an image
    without an object cell has every cell at FAR."""
    cells = masks.reshape(-1, 1, *grid).float()
    distance = torch.full(cells.shape, FAR, dtype=torch.long)
    for d in range(FAR):
        distance[(cells > 0) & (distance == FAR)] = d
        cells = F.max_pool2d(cells, 3, stride=1, padding=1)
    return distance.reshape(masks.shape)


def _between_spread(rows: Tensor, image: Tensor, image_value: Tensor, second_half: Tensor) -> float:
    """Σ_v p_v ⟨μ_v − m, μ'_v − m'⟩ of `rows` [N, D] from images `image` [N], whose values are `image_value` [B] and
    halves `second_half` [B]; each half is centred on its value means weighted by the shared p."""
    cell = image_value[image] * 2 + second_half[image].long()  # (value, half) of each row
    cells = 2 * (int(image_value.max()) + 1)
    sums = torch.zeros(cells, rows.shape[1], dtype=torch.float64).index_add_(0, cell, rows.double())
    counts = torch.bincount(cell, minlength=cells).double().reshape(-1, 2)
    present = (counts > 0).all(1)
    if not present.any():
        return 0.0
    p = counts[present].sum(1) / counts[present].sum()
    means = (sums.reshape(-1, 2, rows.shape[1])[present] / counts[present][..., None])  # [V, 2 halves, D]
    centred = means - torch.einsum("v,vhd->hd", p, means)
    return float(torch.einsum("v,vd,vd->", p, centred[:, 0], centred[:, 1]))


def factor_signal(rows: Tensor, masks: Tensor, grid: tuple[int, int], readings: list[dict], factors=FACTORS) -> dict[str, dict]:
    """Per factor: its signal's spread and amplitude at each distance from the object, the standard deviation of the
    on-object spread under shuffled values, whether the on-object spread is clear of it, and the on-object ratio to
    chance (None without any signal).

    `rows` Tensor[B, P, D] of B whole images, `masks` bool Tensor[B, P] on `grid`, `readings` each image's factor
    values. Images split into halves by the parity of their index; noise from `SHUFFLES` seeded shuffles of the values.
    """
    if rows.shape[0] < 4:
        raise ExplorerError(f"The factor signal needs at least 4 images (two per half), got {rows.shape[0]}.")
    distance = distance_to_object(masks, grid)
    image = torch.arange(rows.shape[0])[:, None].expand_as(distance)
    second_half = torch.arange(rows.shape[0]) % 2 == 1
    groups = [(rows[distance == d], image[distance == d]) for d in range(FAR + 1)]
    counts = [len(at) for _, at in groups]
    result = {}
    for factor in factors:
        shuffles = torch.Generator().manual_seed(0)  # each factor's noise, whatever the others asked for
        names = sorted({reading[factor] for reading in readings})
        value = torch.tensor([names.index(reading[factor]) for reading in readings])
        spread = [_between_spread(g, at, value, second_half) if len(at) else 0.0 for g, at in groups]
        amplitude = [max(s, 0.0) ** 0.5 for s in spread]
        on_object, at_object = groups[0]
        null = [_between_spread(on_object, at_object, value[torch.randperm(len(value), generator=shuffles)], second_half)
                for _ in range(SHUFFLES if len(at_object) else 0)]
        noise = float(torch.tensor(null).std()) if null else 0.0
        mean_amplitude = sum(a * n for a, n in zip(amplitude, counts)) / sum(counts)
        result[factor] = {"spread_by_distance": spread, "amplitude_by_distance": amplitude, "object_spread_noise": noise,
                          "clear": spread[0] > CLEAR * noise,
                          "object_ratio": amplitude[0] / mean_amplitude if mean_amplitude else None}
    return result


def compare(bundle: Bundle, traj: Tensor, thumbnails: Tensor, classifier) -> dict[str, dict]:
    """The factor signal in the activations (each step at unit RMS), in the bundle's encoded rows and in what its sparse
    code reads (the rows less the dense part), beside its latents' median on-object ratio per factor, on one set of images;
    and the object factors' signal in each step's block alone, of the activations and of the encoded rows."""
    grid = tuple(bundle.manifest["shapes"]["grid"])
    images, positions = len(thumbnails), grid[0] * grid[1]
    if bundle.encoding.variant not in DENSE_VARIANTS:
        raise ExplorerError(f"The factor signal reads one row per position: a {' or '.join(DENSE_VARIANTS)} bundle, not {bundle.encoding.variant}.")
    if traj.shape[0] != images * positions:
        raise ExplorerError(f"Need whole images of {positions} positions: got {traj.shape[0]} rows for {images} images.")
    masks = object_masks(thumbnails, grid)
    readings = classifier.predict(thumbnails.permute(0, 3, 1, 2).float() / 255)
    with torch.no_grad():
        encoded = bundle.encoding.to_rows(traj)
        sparse_input = encoded - bundle.sae.dense_part(encoded)
        codes = bundle.sae.encode(encoded).reshape(images, positions, -1)
    activations = TrajectoryEncoding("concat", bundle.encoding.dynamics).to_rows(traj)  # each step at unit RMS
    inputs = {"activations": activations, "encoded rows": encoded, "sparse code's input": sparse_input}
    signal = {name: factor_signal(rows.reshape(images, positions, -1), masks, grid, readings) for name, rows in inputs.items()}
    steps = {name: [factor_signal(rows.reshape(images, positions, bundle.encoding.steps, -1)[:, :, t], masks, grid, readings, OBJECT_FACTORS)
                    for t in range(bundle.encoding.steps)] for name, rows in inputs.items() if name != "sparse code's input"}
    latents = localization(codes, masks, bundle.labels, bundle.is_global)
    return {"object_share": float(masks.float().mean()), "images": images, "signal": signal, "by_step": steps,
            "latents": {factor: latents["object_factors"][factor]["median_ratio"] for factor in OBJECT_FACTORS}}


def _ratio(signal: dict) -> str:
    """A factor's on-object ratio as the tables print it: † marks a spread not clear of its noise."""
    ratio = signal["object_ratio"]
    return "–" if ratio is None else f"{ratio:.2f}" + ("" if signal["clear"] else " †")


def table(result: dict) -> str:
    """The markdown table that docs/LOCALIZATION.md quotes."""
    names = list(result["signal"])
    lines = ["| factor | " + " | ".join(f"signal in the {name}, × chance" for name in names) + " | latents (median), × chance |",
             "|---|" + "---:|" * (len(names) + 1)]
    for factor in FACTORS:
        latent = result["latents"].get(factor)
        lines.append(f"| {factor} | " + " | ".join(_ratio(result["signal"][name][factor]) for name in names)
                     + f" | {'–' if latent is None else f'{latent:.2f}'} |")
    return "\n".join(lines)


def step_table(result: dict) -> str:
    """Per step, the object factors' ratio in the activations at that step and in the encoded rows' block of that step."""
    names = list(result["by_step"])
    lines = ["| step | " + " | ".join(f"{name}: {factor}" for name in names for factor in OBJECT_FACTORS) + " |",
             "|---:|" + "---:|" * (len(names) * len(OBJECT_FACTORS))]
    for t in range(len(result["by_step"][names[0]])):
        lines.append(f"| {t} | " + " | ".join(_ratio(result["by_step"][name][t][factor]) for name in names for factor in OBJECT_FACTORS) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser("python -m backend.evaluation.factor_signal", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="a residualized or concat shapes-world bundle")
    parser.add_argument("--trajectories", required=True,
                        help="a collect stage's output at the bundle's site and model (whole images), e.g. an evaluation's "
                             "<work-dir>/up_ft1/train/collect: split halves need a few hundred images")
    args = parser.parse_args(argv)
    try:
        bundle = Bundle.load(args.bundle)
        collected = test_trajectories(args.trajectories)
        result = compare(bundle, collected["traj"], collected["thumbnails"], load_classifier())
    except ExplorerError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"{result['images']} images; the object covers {result['object_share']:.3f} of the positions.\n")
    print(table(result))
    print("\nEach step's block alone, × chance:\n")
    print(step_table(result))
    print(f"\n† the on-object spread is not above {CLEAR:g} standard deviations of its noise ({SHUFFLES} shuffles of the values across images).")
    print("\nAmplitude by distance from the object (cells 0, 1, …, ≥ FAR), sparse code's input: " + "; ".join(
        f"{factor} " + " ".join(f"{a:.2f}" for a in result["signal"]["sparse code's input"][factor]["amplitude_by_distance"])
        for factor in FACTORS))


if __name__ == "__main__":
    main()
