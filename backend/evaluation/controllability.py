"""Steering success in the shapes world: does steering a latent labelled with a factor value make the image show it?

A trial steers one atlas image with the purest latent labelled `factor = target`, through
`Bundle.generate` (the app's own path), and reads base and steered images with the factor
classifier. It counts as *reached* when the steered reading of the factor is the target, and
as *clean* when, besides, every other factor reads as in the base image. Ablation trials
instead scale to zero every latent labelled with the image's own value and ask whether the
reading leaves it. Insertion trials add from a later start step to the end (when can a concept
still be inserted?), and prompting trials write the target value into the image's caption
instead: what a user could do without the SAE.
"""

from collections import Counter
from dataclasses import asdict, dataclass

import torch

from backend.diffusion.steering import Steer
from backend.serving.bundle import Bundle
from backend.shapes.captions import canonical_caption
from backend.shapes.render import Factors


@dataclass(frozen=True)
class Trial:
    kind: str  # "add" (steer towards target), "ablate" (remove the image's own value) or "prompt" (target in the caption)
    factor: str
    target: str
    image_id: int
    strength: float
    window: str  # a name from `step_windows`
    reached: bool
    clean: bool


def step_windows(num_steps: int) -> dict[str, tuple[int, int]]:
    """The whole schedule and its thirds, as inclusive sampler-step windows."""
    third = num_steps // 3
    return {"all": (0, num_steps - 1), "early": (0, third - 1), "middle": (third, 2 * third - 1), "late": (2 * third, num_steps - 1)}


def insertion_windows(num_steps: int) -> dict[str, tuple[int, int]]:
    """Windows from a quarter, half and three quarters of the schedule to its end ("from 0" is the whole schedule)."""
    return {f"from {start}": (start, num_steps - 1) for start in (num_steps // 4, num_steps // 2, 3 * num_steps // 4)}


def labelled_latents(bundle: Bundle, factor: str) -> dict[str, list[int]]:
    """Latents labelled with each value of `factor`, purest first."""
    by_value: dict[str, list[int]] = {}
    for j, label in enumerate(bundle.labels):
        if label.get("factor") == factor:
            by_value.setdefault(label["value"], []).append(j)
    return {v: sorted(js, key=lambda j: -bundle.labels[j]["purity"]) for v, js in by_value.items()}


def images_not_showing(bundle: Bundle, factor: str, value: str, count: int) -> list[int]:
    """The first `count` atlas images whose caption names another value of `factor`, cycling over those values."""
    by_value: dict[str, list[int]] = {}
    for i, image in enumerate(bundle.images):
        other = image.get("factors", {}).get(factor)
        if other is not None and other != value:
            by_value.setdefault(other, []).append(i)
    queues = [ids for _, ids in sorted(by_value.items())]
    picked = []
    while len(picked) < count and any(queues):
        for ids in queues:
            if ids and len(picked) < count:
                picked.append(ids.pop(0))
    return picked


def images_showing(bundle: Bundle, factor: str, value: str, count: int) -> list[int]:
    """The first `count` atlas images whose caption names `value` for `factor`."""
    return [i for i, image in enumerate(bundle.images) if image.get("factors", {}).get(factor) == value][:count]


class SteeringJudge:
    """Runs steered generations and reads them with the factor classifier."""

    def __init__(self, bundle: Bundle, classifier):
        self.bundle, self.classifier = bundle, classifier

    def judged(self, kind: str, factor: str, target: str, image_id: int, base: dict, after: dict, strength: float,
               window_name: str) -> Trial | None:
        """A trial from the classifier's readings before and after; None when the base image does not qualify
        (already shows the target, or for ablation lacks it)."""
        if kind == "ablate":
            if base[factor] != target:
                return None
            reached = after[factor] != target
        else:
            if base[factor] == target:
                return None
            reached = after[factor] == target
        clean = reached and all(after[f] == base[f] for f in base if f != factor)
        return Trial(kind, factor, target, image_id, strength, window_name, reached, clean)

    def prompted(self, factor: str, target: str, image_id: int) -> Trial | None:
        """The prompting baseline: the image's seed with a caption that names `target` for `factor`, nothing steered."""
        image = self.bundle.images[image_id]
        base = self.bundle.generate(image["prompt"], image["seed"], []).base_run.result.images
        before = self.classifier.predict(base)[0]
        # factors the image's caption leaves out were drawn by the model: the new caption names them as read in the base
        caption = canonical_caption(Factors(**(before | image.get("factors", {}) | {factor: target})))
        after = self.classifier.predict(self.bundle.generate(caption, image["seed"], []).base_run.result.images)[0]
        return self.judged("prompt", factor, target, image_id, before, after, 0.0, "prompt")

    def readings(self, image_id: int, steers: list[Steer], window: tuple[int, int]) -> tuple[dict, dict]:
        image = self.bundle.images[image_id]
        result = self.bundle.generate(image["prompt"], image["seed"], steers, window=window)
        base, steered = self.classifier.predict(torch.cat([result.base_run.result.images, result.steered_images]))
        return base, steered

    def trial(self, kind: str, factor: str, target: str, image_id: int, steers: list[Steer], strength: float,
              window_name: str, window: tuple[int, int]) -> Trial | None:
        """One steering trial; None when the base image does not qualify."""
        base, steered = self.readings(image_id, steers, window)
        return self.judged(kind, factor, target, image_id, base, steered, strength, window_name)


def steering_trials(bundle: Bundle, classifier, factors: list[str], strengths: list[float], window_strength: float,
                    targets_per_factor: int, images_per_target: int) -> list[dict]:
    """Add trials over strengths (whole schedule), windows and insertion windows (at `window_strength`), ablation
    trials, and the prompting baseline.

    Per factor, the `targets_per_factor` values whose best latent is purest are steered towards,
    each on `images_per_target` images that show another value.
    """
    judge = SteeringJudge(bundle, classifier)
    num_steps = int(bundle.manifest["schedule"]["num_steps"])
    windows = step_windows(num_steps) | insertion_windows(num_steps)
    conditions = list(dict.fromkeys([(s, "all") for s in strengths] + [(window_strength, w) for w in windows]))
    trials = []
    for factor in factors:
        latents = labelled_latents(bundle, factor)
        targets = sorted(latents, key=lambda v: -bundle.labels[latents[v][0]]["purity"])[:targets_per_factor]
        for target in targets:
            best = latents[target][0]
            for image_id in images_not_showing(bundle, factor, target, images_per_target):
                for strength, window in conditions:
                    trials.append(judge.trial("add", factor, target, image_id, [Steer(best, strength, "add")], strength,
                                              window, windows[window]))
                trials.append(judge.prompted(factor, target, image_id))
            ablation = [Steer(j, 0.0, "scale") for j in latents[target]]
            for image_id in images_showing(bundle, factor, target, images_per_target):
                trials.append(judge.trial("ablate", factor, target, image_id, ablation, 0.0, "all", windows["all"]))
    return [asdict(t) for t in trials if t is not None]


def success_rates(trials: list[dict], key: str, kind: str = "add", **where) -> dict:
    """Share of `kind` trials matching `where` that were reached and clean, grouped by `key`."""
    chosen = [t for t in trials if t["kind"] == kind and all(t[k] == v for k, v in where.items())]
    counts = Counter(t[key] for t in chosen)
    return {value: {"n": n,
                    "reached": sum(t["reached"] for t in chosen if t[key] == value) / n,
                    "clean": sum(t["clean"] for t in chosen if t[key] == value) / n}
            for value, n in sorted(counts.items())}
