"""Do the feature icons show what a latent's label says? Read every labelled latent's icons with the factor classifier.

For each labelled latent and icon strength: does the classifier read the label's value for the
label's factor in the icon? The baseline is the unsteered neutral image: the share of the same
latents whose label value it already shows (an icon that changes nothing scores that).

`python -m backend.evaluation.icons BUNDLE` prints the table that docs/ICONS.md quotes.
"""

import argparse
import json

import torch

from backend.errors import ExplorerError
from backend.serving.bundle import Bundle
from backend.shapes.classify import load_classifier


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
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        agreement = icon_agreement(Bundle.load(args.bundle), load_classifier())
    except ExplorerError as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(agreement, indent=2) if args.json else table(agreement))


if __name__ == "__main__":
    main()
