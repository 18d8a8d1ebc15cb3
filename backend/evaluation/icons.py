"""Do the feature icons show what a latent's label says? Read every labelled latent's icons with the factor classifier.

For each labelled latent and icon strength: does the classifier read the label's value for the
label's factor in the icon? The baseline is the unsteered neutral image: the share of the same
latents whose label value it already shows (an icon that changes nothing scores that).

Effect labels say what a latent does where its label says where it fires: the factor values the
classifier reads in the latent's strongest icon and not in the neutral image.

`python -m backend.evaluation.icons BUNDLE` prints the tables that docs/ICONS.md quotes;
`--write-effects` also stores the effect labels in the bundle (atlas/effects.json), which the app shows.
"""

import argparse
import json

import torch

from backend.errors import ExplorerError
from backend.io import write_json
from backend.serving.bundle import Bundle, rewrite_manifest
from backend.serving.icons import EFFECTS_FILE, ICON_FILE, agrees
from backend.shapes.classify import flooded, load_classifier

READER = "shapes factor classifier (backend/shapes/classify.py)"


def icon_agreement(bundle: Bundle, classifier) -> dict[str, dict]:
    """Per label factor: how many labelled latents have icons, the baseline share, and the share at each strength."""
    icons = bundle.icons
    strengths = icons.settings.strengths
    base = classifier.predict(icons.base.permute(2, 0, 1)[None].float() / 255)[0]
    by_factor: dict[str, list[int]] = {}
    for j, label in enumerate(bundle.labels):
        if label.get("factor") and icons.drawn[j]:
            by_factor.setdefault(label["factor"], []).append(j)
    if not by_factor:
        raise ExplorerError("No latent of this bundle has both a label and an icon: icon agreement needs a shapes-world bundle.")
    result = {}
    for factor, latents in sorted(by_factor.items()):
        values = [bundle.labels[j]["value"] for j in latents]
        images = icons.images[latents].flatten(0, 1).permute(0, 3, 1, 2).float() / 255  # latent-major, strengths inner
        read = [r[factor] for r in classifier.predict(images)]
        shows = torch.tensor([r == v for r, v in zip(read, (v for v in values for _ in strengths))]).reshape(len(latents), -1)
        result[factor] = {"latents": len(latents), "baseline": sum(base[factor] == v for v in values) / len(values),
                          "shows_label": {f"{a:g}": int(shows[:, s].sum()) / len(latents) for s, a in enumerate(strengths)}}
    return result


def strongest_icon(strengths: tuple[float, ...]) -> int:
    """Index of the largest positive strength: what adding the latent does (a negative icon subtracts it)."""
    positive = [i for i, a in enumerate(strengths) if a > 0]
    if not positive:
        raise ExplorerError(f"Effect labels read an icon that adds the latent, but every icon strength is negative: {list(strengths)}.")
    return max(positive, key=lambda i: strengths[i])


def effect_labels(bundle: Bundle, classifier) -> list[list[dict] | None]:
    """Per latent: the factor values its strongest icon shows and the neutral image does not (None: no icon); an icon
    filled with one colour says only that (`flooded`), since the classifier's readings of such an image mean nothing."""
    icons = bundle.icons
    base = classifier.predict(icons.base.permute(2, 0, 1)[None].float() / 255)[0]
    drawn = icons.drawn.nonzero().flatten().tolist()
    strongest = icons.images[drawn, strongest_icon(icons.settings.strengths)].permute(0, 3, 1, 2).float() / 255
    effects: list[list[dict] | None] = [None] * bundle.n_latents
    for j, reading, filled in zip(drawn, classifier.predict(strongest), flooded(strongest)):
        effects[j] = ([{"factor": "colour", "value": filled, "note": "fills the image"}] if filled is not None
                      else [{"factor": f, "value": v} for f, v in reading.items() if v != base[f]])
    return effects


def write_effects(bundle: Bundle, effects: list[list[dict] | None]) -> None:
    """Store effect labels in the bundle, tied to the icons they were read from."""
    write_json(bundle.root / EFFECTS_FILE, effects)
    strengths = bundle.icons.settings.strengths
    info = {"reader": READER, "strength": strengths[strongest_icon(strengths)], "icons_sha256": bundle.manifest["files"][ICON_FILE]}
    rewrite_manifest(bundle.root, effects=info)


def effect_agreement(labels: list[dict], effects: list[list[dict] | None]) -> dict[str, dict]:
    """Per label factor: labelled latents with an effect label, and the share whose effect includes the label's value."""
    by_factor: dict[str, list[bool]] = {}
    for label, changes in zip(labels, effects):
        agreed = agrees(label, changes)
        if agreed is not None:
            by_factor.setdefault(label["factor"], []).append(agreed)
    return {factor: {"latents": len(rows), "agree": sum(rows) / len(rows)} for factor, rows in sorted(by_factor.items())}


def table(agreement: dict[str, dict]) -> str:
    """The agreement as a markdown table: a row per factor, a column per strength."""
    strengths = list(next(iter(agreement.values()))["shows_label"])
    lines = ["| factor | latents | unsteered | " + " | ".join(f"α = {a}" for a in strengths) + " |",
             "|---|---:|---:|" + "---:|" * len(strengths)]
    for factor, row in agreement.items():
        shares = " | ".join(f"{row['shows_label'][a]:.2f}" for a in strengths)
        lines.append(f"| {factor} | {row['latents']} | {row['baseline']:.2f} | {shares} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser("python -m backend.evaluation.icons", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="a shapes-world bundle with icons (its labels come from the factors)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead of tables")
    parser.add_argument("--write-effects", action="store_true", help=f"store every latent's effect label in the bundle ({EFFECTS_FILE})")
    args = parser.parse_args(argv)
    try:
        bundle, classifier = Bundle.load(args.bundle), load_classifier()
        agreement = icon_agreement(bundle, classifier)
        effects = effect_labels(bundle, classifier)
        if args.write_effects:
            write_effects(bundle, effects)
    except ExplorerError as err:
        raise SystemExit(f"error: {err}") from None
    agree = effect_agreement(bundle.labels, effects)
    if args.json:
        print(json.dumps({"icons_show_label": agreement, "effect_agrees_with_label": agree}, indent=2))
        return
    print(table(agreement))
    print("\n| label factor | latents | effect includes the label's value |\n|---|---:|---:|")
    for factor, row in agree.items():
        print(f"| {factor} | {row['latents']} | {row['agree']:.2f} |")


if __name__ == "__main__":
    main()
