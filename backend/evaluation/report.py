"""EVALUATION.md and its plots from the results of `python -m backend.evaluate`.

Every sentence about who wins is computed from the numbers, so a rerun that changes them
changes the text with them.
"""

import math
import operator
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display
import matplotlib.pyplot as plt  # noqa: E402

from backend.evaluation.controllability import success_rates  # noqa: E402
from backend.evaluation.localization import OBJECT_FACTORS  # noqa: E402
from backend.io import atomic_path  # noqa: E402

FACTORS = ("colour", "shape", "size", "position", "background")
WINDOW_ORDER = ("all", "early", "middle", "late")


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float], digits: int = 3) -> str:
    mean, spread = mean_spread(values)
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def group(runs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Runs by (site, variant), in the order first seen."""
    groups = defaultdict(list)
    for run in runs:
        groups[run["site"], run["variant"]].append(run)
    return groups


def summary_metrics(runs: list[dict], strength: float) -> dict[str, list[float]]:
    """One number per run for each headline metric (lower is better unless the name says success)."""
    metrics = defaultdict(list)
    for run in runs:
        metrics["FVU activation"].append(statistics.fmean(run["fvu_activation"]))
        metrics["FVU activation, one-step"].append(statistics.fmean(run["fvu_activation_one_step"]))
        metrics["FVU residual"].append(statistics.fmean(run["fvu_residual"]))
        metrics["dead (train)"].append(run["dead_fraction_train"])
        metrics["σ_label / random"].append(statistics.fmean(run["sigma_label"][f] / run["sigma_random"][f] for f in FACTORS))
        metrics["labelled share"].append(run["labelled_share"])
        steer = success_rates(run["trials"], "strength", window="all").get(strength)
        metrics["steering reached"].append(steer["reached"] if steer else float("nan"))
        metrics["steering clean"].append(steer["clean"] if steer else float("nan"))
        ablate = success_rates(run["trials"], "window", kind="ablate").get("all")
        metrics["ablation success"].append(ablate["reached"] if ablate else float("nan"))
    return metrics


def localization_metrics(runs: list[dict]) -> dict[str, list[float]]:
    """One number per run for where and when latents fire (backend/evaluation/localization.py); NaN for runs measured before."""
    metrics = defaultdict(list)
    for run in runs:
        located = run.get("localization", {})
        groups = located.get("groups", {})
        for name in ("object", "background", "position", "unlabelled"):
            metrics[f"{name} mass ×chance"].append(groups.get(name, {}).get("median_ratio"))
        metrics["image-wide mass"].append(located.get("image_wide_mass_share"))
        metrics["object map IoU"].append(run.get("map_iou_object"))
        metrics["object map IoU, DAAM's rule"].append(run.get("map_iou_object_daam"))
        metrics["effective steps"].append(run.get("temporal", {}).get("effective_steps_median"))
        metrics["image-wide mass in ± pairs"].append(located.get("image_wide_paired_mass_share"))
        for factor in OBJECT_FACTORS:
            metrics[f"{factor} mass ×chance"].append(located.get("object_factors", {}).get(factor, {}).get("median_ratio"))
            metrics[f"{factor} map IoU, DAAM's rule"].append(run.get("map_iou_daam_by_factor", {}).get(factor))
            metrics[f"{factor} label map IoU, DAAM's rule"].append(run.get("label_map_iou_daam", {}).get(factor))
    return {name: [float("nan") if v is None else v for v in values] for name, values in metrics.items()}


def concept_metrics(runs: list[dict]) -> dict[str, list[float]]:
    """Per run and found factor: the hit rate of Bundle.contrast at top 5, averaged over the factor's values."""
    metrics = defaultdict(list)
    for run in runs:
        for factor, by_value in sorted(run.get("concepts", {}).items()):  # runs read back from JSON have their keys sorted
            metrics[f"{factor} found"].append(statistics.fmean(by_value.values()))
    return metrics


def insertion_metrics(runs: list[dict], strength: float) -> dict[str, list[float]]:
    """Per run: the prompting baseline's success, and steering success by the step the window starts at (to the end)."""
    metrics = defaultdict(list)
    for run in runs:
        prompt = success_rates(run["trials"], "window", kind="prompt").get("prompt", {})
        metrics["prompting reached"].append(prompt.get("reached", float("nan")))
        metrics["prompting clean"].append(prompt.get("clean", float("nan")))
        for start, rate in insertion_curve(run, strength):
            metrics[f"reached from step {start}"].append(rate)
    return metrics


def insertion_curve(run: dict, strength: float) -> list[tuple[int, float]]:
    """(start step, reached) of the add trials at `strength` whose window runs from that step to the end."""
    rates = success_rates(run["trials"], "window", strength=strength)
    starts = [(0, "all")] + sorted((int(name.split()[-1]), name) for name in rates if name.startswith("from "))
    return [(start, rates[name]["reached"]) for start, name in starts if name in rates]


HIGHER_IS_BETTER = {"colour found", "shape found", "background found", "labelled share", "steering reached", "steering clean", "ablation success", "object mass ×chance",
                    "position mass ×chance", "object map IoU", "object map IoU, DAAM's rule",
                    *(f"{factor} mass ×chance" for factor in OBJECT_FACTORS), *(f"{factor} map IoU, DAAM's rule" for factor in OBJECT_FACTORS),
                    *(f"{factor} label map IoU, DAAM's rule" for factor in OBJECT_FACTORS)}
NEUTRAL = {"background mass ×chance", "unlabelled mass ×chance", "effective steps", "prompting reached", "prompting clean"}  # neither direction is better


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _band(ax, per_run: list[list[float]], label: str) -> None:
    """Mean over seeds with a min–max band."""
    steps = range(1, len(per_run[0]) + 1)
    columns = list(zip(*per_run))
    ax.plot(steps, [statistics.fmean(c) for c in columns], marker=".", label=label)
    ax.fill_between(steps, [min(c) for c in columns], [max(c) for c in columns], alpha=0.2)


def plot_fvu(results: dict, sites: list[str], variants: list[str], path: Path) -> None:
    groups = group(results["runs"])
    fig, axes = plt.subplots(2, len(sites), figsize=(5 * len(sites), 7), squeeze=False, layout="constrained")
    for col, site in enumerate(sites):
        for row, (key, title) in enumerate((("fvu_activation", "activation space"), ("fvu_residual", "residual space"))):
            ax = axes[row][col]
            for variant in variants:
                _band(ax, [run[key] for run in groups[site, variant]], variant)
            ax.set(title=f"{site}: FVU, {title}", xlabel="recorded step t", ylabel="FVU (test images)", yscale="log")
            ax.legend()
    _save(fig, path)


def plot_r2(results: dict, sites: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    for site in sites:
        r2 = results["r2_per_step"][site]
        ax.plot(range(1, len(r2) + 1), r2, marker=".", label=site)
    ax.set(title="R² of the linear dynamics, step t → t+1", xlabel="t", ylabel="R² (held-out positions)")
    ax.legend()
    _save(fig, path)


def plot_purity(results: dict, sites: list[str], variants: list[str], path: Path) -> None:
    groups = group(results["runs"])
    fig, axes = plt.subplots(1, len(sites), figsize=(6 * len(sites), 3.5), squeeze=False, layout="constrained")
    width = 0.8 / len(variants)
    for col, site in enumerate(sites):
        ax = axes[0][col]
        for i, variant in enumerate(variants):
            runs = groups[site, variant]
            ratios = [mean_spread([r["sigma_label"][f] / r["sigma_random"][f] for r in runs]) for f in FACTORS]
            ax.bar([x + i * width for x in range(len(FACTORS))], [m for m, _ in ratios], width, yerr=[s for _, s in ratios],
                   label=variant)
        ax.set_xticks([x + width * (len(variants) - 1) / 2 for x in range(len(FACTORS))], FACTORS)
        ax.axhline(1.0, color="gray", linestyle=":")
        ax.set(title=f"{site}: σ_label / random (lower: purer)", ylabel="ratio")
        ax.legend(loc="lower left", fontsize="small")
    _save(fig, path)


def plot_steering(results: dict, sites: list[str], variants: list[str], path: Path) -> None:
    """Success vs strength and vs window; solid: reached and clean, dashed: reached."""
    groups = group(results["runs"])
    strength = results["config"]["window_strength"]
    fig, axes = plt.subplots(2, len(sites), figsize=(5 * len(sites), 7), squeeze=False, layout="constrained")
    for col, site in enumerate(sites):
        for variant in variants:
            runs = groups[site, variant]
            for ax, rates, keys in (
                (axes[0][col], [success_rates(r["trials"], "strength", window="all") for r in runs], None),
                (axes[1][col], [success_rates(r["trials"], "window", strength=strength) for r in runs], WINDOW_ORDER),
            ):
                keys = [k for k in keys or sorted({k for rate in rates for k in rate}) if any(k in rate for rate in rates)]
                x = [f"{k:g}" if isinstance(k, float) else k for k in keys]  # categorical: strengths are log-spaced
                clean = ax.errorbar(x, *_mean_and_spread(rates, keys, "clean"), marker="o", capsize=3, label=variant)
                ax.plot(x, _mean_and_spread(rates, keys, "reached")[0], linestyle="--", color=clean.lines[0].get_color())
        axes[0][col].set(title=f"{site}: success vs α (whole schedule)", xlabel="α (× typical activation)",
                         ylabel="clean (dashed: reached)", ylim=(-0.05, 1.05))
        axes[1][col].set(title=f"{site}: success vs window (α = {strength:g})", xlabel="window",
                         ylabel="clean (dashed: reached)", ylim=(-0.05, 1.05))
        for ax in axes[:, col]:
            ax.legend()
    _save(fig, path)


def plot_peaks(results: dict, sites: list[str], variants: list[str], path: Path) -> None:
    """Share of latents whose feature trajectory (relative to the activation scale) peaks at each step, summed over seeds."""
    fig, axes = plt.subplots(1, len(sites), figsize=(5 * len(sites), 3.5), squeeze=False)
    groups = group(results["runs"])
    for ax, site in zip(axes[0], sites):
        for variant in variants:
            counts = [run["temporal"]["peak_step_counts"] for run in groups[site, variant] if "temporal" in run]
            if counts:
                totals = [sum(c) for c in zip(*counts)]
                ax.plot(range(len(totals)), [t / sum(totals) for t in totals], marker=".", label=variant)
        ax.set(title=site, xlabel="recorded step", ylabel="share of latents peaking there")
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_frontier(results: dict, sites: list[str], variants: list[str], strength: float, path: Path) -> None:
    """Per run: held-out FVU of the SAE input against object mass ×chance, coloured by steering reached (the trade-off)."""
    fig, axes = plt.subplots(1, len(sites), figsize=(5.5 * len(sites), 4), squeeze=False)
    groups = group(results["runs"])
    markers = dict(zip(variants, "osD^vP*X"))
    for ax, site in zip(axes[0], sites):
        for variant in variants:
            runs = groups[site, variant]
            fvu = [run["fvu_input"] for run in runs]
            located = localization_metrics(runs)["object mass ×chance"]
            reached = summary_metrics(runs, strength)["steering reached"]
            points = ax.scatter(fvu, located, c=reached, cmap="viridis", vmin=0, vmax=1, marker=markers[variant], s=60,
                                edgecolors="black", label=variant)
        ax.set(title=site, xlabel="held-out FVU of the SAE input", ylabel="object-labelled mass on the object, ×chance")
        ax.legend(fontsize=8)
        fig.colorbar(points, ax=ax, label=f"steering reached (α = {strength:g})")
    _save(fig, path)


def plot_insertion(results: dict, sites: list[str], variants: list[str], strength: float, path: Path) -> None:
    """Steering reached against the window's start step, per variant (mean over seeds), with the prompting baseline."""
    fig, axes = plt.subplots(1, len(sites), figsize=(5 * len(sites), 3.5), squeeze=False)
    groups = group(results["runs"])
    for ax, site in zip(axes[0], sites):
        for variant in variants:
            curves = [dict(insertion_curve(run, strength)) for run in groups[site, variant]]
            starts = sorted(set().union(*curves))
            if starts:
                ax.plot(starts, [statistics.fmean(c[s] for c in curves if s in c) for s in starts], marker="o", label=variant)
        prompting = [m for v in variants for m in insertion_metrics(groups[site, v], strength)["prompting reached"] if m == m]
        if prompting:
            ax.axhline(statistics.fmean(prompting), color="gray", linestyle="--", label="prompting")
        ax.set(title=site, xlabel="first edited sampler step (edit runs to the end)", ylabel="steering reached", ylim=(-0.05, 1.05))
        ax.legend(fontsize=8)
    _save(fig, path)


def _mean_and_spread(rates_per_run: list[dict], keys: list, measure: str) -> tuple[list[float], list[float]]:
    stats = [mean_spread([rates[key][measure] for rates in rates_per_run if key in rates]) for key in keys]
    return [m for m, _ in stats], [s for _, s in stats]


def findings(results: dict, sites: list[str], variants: list[str], strength: float) -> list[str]:
    """Per site and metric: which variant is best, and where the residualized one stands."""
    groups = group(results["runs"])
    lines = []
    for site in sites:
        per_variant = {v: summary_metrics(groups[site, v], strength) | localization_metrics(groups[site, v])
                       | insertion_metrics(groups[site, v], strength) | concept_metrics(groups[site, v]) for v in variants}
        for metric in next(iter(per_variant.values())):
            if metric in NEUTRAL or metric.startswith("reached from step"):
                continue
            means = {v: mean_spread(per_variant[v][metric])[0] for v in variants}
            means = {v: m for v, m in means.items() if m == m}
            if not means:
                continue
            pick = max if metric in HIGHER_IS_BETTER else min
            best = pick(means, key=means.get)
            text = ", ".join(f"{v} {means[v]:.3f}" for v in variants if v in means)
            verdict = "the residualized variant is best" if best == "residualized" else f"best is {best}, not the residualized variant"
            lines.append(f"- {site}, {metric}: {verdict} ({text}).")
    return lines


def write_report(results: dict, out: Path) -> Path:
    """Write EVALUATION.md and four PNG plots into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = results["config"]
    sites = list(results["r2_per_step"])
    variants = list(dict.fromkeys(run["variant"] for run in results["runs"]))
    strength = float(cfg["window_strength"])
    plot_fvu(results, sites, variants, out / "eval-fvu.png")
    plot_r2(results, sites, out / "eval-r2.png")
    plot_purity(results, sites, variants, out / "eval-purity.png")
    plot_steering(results, sites, variants, out / "eval-steering.png")
    plot_peaks(results, sites, variants, out / "eval-peaks.png")
    plot_insertion(results, sites, variants, strength, out / "eval-insertion.png")
    plot_frontier(results, sites, variants, strength, out / "eval-frontier.png")
    groups = group(results["runs"])
    header = ["site", "variant", "seeds", "FVU act.", "FVU act. 1-step", "FVU resid.", "dead (train)", "σ/random",
              "labelled", "steer reached", "steer clean", "ablation ok"]
    rows = []
    for (site, variant), runs in groups.items():
        m = summary_metrics(runs, strength)
        rows.append([site, variant, str(len(runs))] + [fmt(m[k]) for k in m])
    located = {key: localization_metrics(runs) for key, runs in groups.items()}
    located_header = ["site", "variant", *(name.replace(" mass ×chance", " ×chance") for name in next(iter(located.values())))]
    located_rows = [[site, variant] + [fmt(values, 2) for values in m.values()] for (site, variant), m in located.items()]
    inserted = {key: insertion_metrics(runs, strength) for key, runs in groups.items()}
    insertion_header = ["site", "variant", *next(iter(inserted.values()))]
    insertion_rows = [[site, variant] + [fmt(values, 2) for values in m.values()] for (site, variant), m in inserted.items()]
    found = {key: concept_metrics(runs) for key, runs in groups.items()}
    found_header = ["site", "variant", *next(iter(found.values()), {})]
    found_rows = [[site, variant] + [fmt(m[name], 2) for name in found_header[2:]] for (site, variant), m in found.items()]
    sigma_rows = [[site, variant] + [fmt([r["sigma_label"][f] for r in runs], 2) for f in FACTORS] for (site, variant), runs in groups.items()]
    random_row = {f: groups[next(iter(groups))][0]["sigma_random"][f] for f in FACTORS}
    text = f"""# Evaluation: SAE input variants ({", ".join(variants)})

{kept_shipped_section(out / "EVALUATION.md")}Reproduce with `{results.get('command', 'python -m backend.evaluate')}` (this file and the `eval-*.png` plots beside it).
Model `{cfg['model']}`{_model_step(results)}; {cfg['train_images']} training captions (SAE training and the atlas that labels latents),
{cfg['test_images']} other test captions (reconstruction); {cfg['num_steps']} DDIM steps, guidance {cfg['guidance_scale']:g},
all steps recorded; {cfg['n_latents']} latents, k = {cfg['k']}, {cfg['epochs']} epochs for every variant; SAE seeds
{cfg['seeds']}. Device: {results['device']}. Values are mean ± standard deviation over seeds.

Concept edits on the shipped bundle, of generated images (`Bundle.edit`, every mechanism tried, beside prompting, on fresh prompts) and of uploaded images (`Bundle.edit_image` on images drawn by the renderer: how much of the upload the reconstruction keeps, and the edits beside prompting through the inversion), are measured by `python -m backend.evaluate --bundle checkpoints/shapes-bundle`: [EDITS.md](EDITS.md).

## What is measured

- **FVU act.**: fraction of variance unexplained of the site's activations, per step, averaged over
  steps, on test images. For the residualized variant every step is decoded from the SAE's
  reconstruction alone, so errors compound through the dynamics; **1-step** instead predicts each
  step from the true previous activation (for the other variants the two are equal).
- **FVU resid.**: the same in residual space, r_1 = a_1, r_(t+1) = a_(t+1) − A_t a_t − b_t, for
  every variant: how much of what the linear dynamics cannot predict the SAE keeps.
- **dead**: share of latents that never fired on the training images.
- **σ/random**: Revelio's σ_label adapted to the factors: per factor, the standard deviation of the
  factor's value index over each latent's top-10 images, averaged over the {cfg['sigma_latents']} most
  active latents, divided by the same for random 10-image sets (1 = no purer than chance; lower
  is purer), then averaged over the five factors. **labelled**: share of latents with a label.
- **steer reached / clean**: steering success. The purest latent labelled `factor = value`
  (factors {cfg['steer_factors']}, {cfg['targets_per_factor']} values each) is added at α × its typical activation
  (here α = {strength:g}, whole schedule) to {cfg['images_per_target']} atlas images per value showing another value;
  *reached* when the classifier then reads the target value, *clean* when besides every other
  factor reads as in the base image. **ablation ok**: all latents labelled with an image's own
  value are scaled to 0; success when the classifier no longer reads that value.

## Results

{_table(header, rows)}

σ_label per factor (random 10-image sets: {", ".join(f"{f} {random_row[f]:.2f}" for f in FACTORS)}):

{_table(["site", "variant", *FACTORS], sigma_rows)}

Where and when latents fire (test images; object masks from the factor classifier, pooled to the site's grid, cells more
than half covered; global latents excluded from the spatial measures):

{_table(located_header, located_rows)}

- **mass ×chance**: per label group (object = colour, shape or size; background; position; unlabelled), the median over
  latents of the share of the latent's code mass on object positions, divided by the share of positions on the object;
  **colour, shape, size ×chance** the same per object factor.
- **image-wide mass**: share of all (local) code mass carried by latents that fire on more than a quarter of an image's
  positions, on average over the images where they fire; **in ± pairs**: the part carried by image-wide latents that are
  one side of a signed pair (each the other's most opposite latent, decoder directions at cosine ≤ −0.9: one dense
  direction coded as two nonnegative latents).
- **object map IoU**: per object-labelled latent, the IoU of its map (code > 0) with the object on its top atlas images,
  averaged; the median over those latents. *DAAM's rule*: the map binarized at 0.4 of its maximum instead, as DAAM
  binarizes its attribution maps (it reports mIoU 0.59–0.65), so the number reads against the field; **colour, shape,
  size map IoU** the same by DAAM's rule over the latents labelled with that factor. **label map IoU**: on each test
  image, the codes of all latents labelled with the image's own value of the factor (as the classifier reads it) summed
  per position, binarized by DAAM's rule, IoU with the object (an empty map counts 0), averaged over images: the map a
  label draws, since one label's code is spread over several latents.
- **effective steps**: per latent, exp of the entropy of its feature trajectory's norm over steps (relative to the
  activation scale at each step), median over latents that fired; 1 = one step, {cfg['num_steps']} = spread evenly.

![Peak steps](eval-peaks.png)

The trade-off between reconstruction, localization and steering, one point per run (held-out FVU of each variant's own
SAE input, so the x positions compare SAEs of one input best):

![Frontier](eval-frontier.png)

Steering against prompting, and concept insertion by step (add trials at α = {strength:g}; *prompting*: the image's
seed with a caption that names the target value, nothing steered: what a user could do without the SAE; *reached
from step s*: the edit runs from sampler step s to the end, so later starts ask how late a concept can still be
inserted):

{_table(insertion_header, insertion_rows)}

![Insertion by start step](eval-insertion.png)

Finding latents for a concept (`Bundle.contrast`, the app's Find panel): for each value of a factor,
{results["config"].get("concept_captions", 4)} random captions showing it against the same captions with another value, at one seed; *found* is the share of
the 5 top-ranked latents labelled with that value, averaged over the factor's values (1 = every one of the five):

{_table(found_header, found_rows)}

R² of the linear dynamics per step (held-out positions): {"; ".join(f"{s}: min {min(results['r2_per_step'][s]):.3f}, median {statistics.median(results['r2_per_step'][s]):.3f}" for s in sites)}.

![FVU per step](eval-fvu.png)

![R² per step](eval-r2.png)

![Label purity](eval-purity.png)

![Steering success](eval-steering.png)

## What the numbers show

{chr(10).join(findings(results, sites, variants, strength))}

Steering and ablation rates rest on few trials: {_trial_counts(results, strength)}. A difference of
one or two trials is within chance.
"""
    path = out / "EVALUATION.md"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


SHIPPED_START = "<!-- The shipped bundle: written by python -m backend.evaluate --bundle; kept when the variants are measured again. -->"
SHIPPED_END = "<!-- End of the shipped bundle. -->"
# Issue 26's goals for the shipped bundle: metric -> (sign, test, value)
SHIPPED_GOALS = {"object mass ×chance": ("≥", operator.ge, 2.5), "image-wide mass": ("≤", operator.le, 0.05),
                 "object map IoU, DAAM's rule": ("≥", operator.ge, 0.3)}


def shipped_metrics(result: dict, strength: float) -> dict[str, float]:
    """The shipped bundle's numbers under the names of the variant tables (one run: no spread)."""
    runs = [result]
    metrics = summary_metrics(runs, strength) | localization_metrics(runs) | concept_metrics(runs)
    return {name: values[0] for name, values in metrics.items()}


def _goal_verdict(name: str, value: float) -> str:
    """'≥ 2.5: **met**' or '**missed**' for a metric with a goal; '' without one or without a value."""
    if name not in SHIPPED_GOALS or math.isnan(value):
        return ""
    sign, test, goal = SHIPPED_GOALS[name]
    return f"{sign} {goal:g}: **{'met' if test(value, goal) else 'missed'}**"


def write_shipped_section(result: dict, bundle: str, sae: str, images: int, first_seed: int, strength: float, command: str,
                          device: str, path: Path) -> None:
    """Put the shipped bundle's table at the top of EVALUATION.md (between SHIPPED_START and SHIPPED_END), keeping the rest;
    steering rows at α = `strength`, whole schedule."""
    rows = [[name, "—" if math.isnan(value) else f"{value:.3f}", _goal_verdict(name, value)]
            for name, value in shipped_metrics(result, strength).items()]
    first_seed_text = f"{first_seed:,}".replace(",", " ")  # 5 000 000
    section = f"""{SHIPPED_START}
## The shipped bundle, as it ships

`{bundle}` (its SAE: {sae}) measured by `{command}` on {device}: the same measures as the variant comparison below, on this bundle's SAE,
atlas and labels, with reconstruction and localization on {images} fresh captions (seeds from {first_seed_text}, far from the
atlas, training, test and edit seeds) and steering on the bundle's own atlas images. One bundle: no spread over seeds.
Goals are issue 26's.

{_table(["measure", "shipped bundle", "goal"], rows)}
{SHIPPED_END}"""
    text = path.read_text() if path.exists() else "# Evaluation\n"
    parts = _split_shipped(text)
    if parts:
        text = parts[0] + section + parts[2]
    else:
        title, _, rest = text.partition("\n")
        text = f"{title}\n\n{section}\n{rest}"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _split_shipped(text: str) -> tuple[str, str, str] | None:
    """(before, the shipped section with its markers, after), or None when the text has no such section."""
    if SHIPPED_START not in text:
        return None
    before, rest = text.split(SHIPPED_START, 1)
    inside, after = rest.split(SHIPPED_END, 1)
    return before, SHIPPED_START + inside + SHIPPED_END, after


def kept_shipped_section(path: Path) -> str:
    """The shipped bundle's section of an existing EVALUATION.md, with its blank line ('' when there is none)."""
    parts = _split_shipped(path.read_text()) if path.exists() else None
    return parts[1] + "\n\n" if parts else ""


def _model_step(results: dict) -> str:
    step = results.get("model_training", {}).get("step")
    return f" (training step {step})" if step is not None else ""


def _trial_counts(results: dict, strength: float) -> str:
    """How many add (at `strength`, whole schedule) and ablation trials each run had, min to max."""
    adds = [success_rates(r["trials"], "strength", window="all").get(strength, {"n": 0})["n"] for r in results["runs"]]
    ablations = [success_rates(r["trials"], "window", kind="ablate").get("all", {"n": 0})["n"] for r in results["runs"]]
    return f"{min(adds)} to {max(adds)} add trials and {min(ablations)} to {max(ablations)} ablation trials per run"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
