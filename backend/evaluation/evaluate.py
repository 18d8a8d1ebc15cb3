"""`python -m backend.evaluate`: residualized vs temporal-concat vs per-step SAEs on the shapes world.

For each site: collect training and test trajectories once, fit the dynamics once, then train
every variant with every seed at the same latent budget through the build pipeline, and measure
reconstruction (test images), dead latents, label purity σ_label (atlas of the training images)
and steering success (factor classifier). Results go to <work-dir>/results.json and, with plots,
to <out>/EVALUATION.md. Each finished run is kept, so an interrupted evaluation resumes.
"""

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from backend.build import Build, BuildConfig
from backend.cli import config_parser, option
from backend.diffusion.collect import read_shards
from backend.diffusion.hooks import SITE_MODULES
from backend.diffusion.models import load_model
from backend.errors import ExplorerError
from backend.evaluation.concepts import CONCEPT_TOP, concept_hits
from backend.evaluation.controllability import steering_trials
from backend.evaluation.edit_report import write_edit_report
from backend.evaluation.edits import EDIT_FACTORS, MECHANISMS, edit_table, edit_trials
from backend.evaluation.uploads import UPLOAD_FACTORS, UPLOAD_MECHANISMS, upload_table, upload_trials
from backend.evaluation.localization import (DAAM_THRESHOLD, OBJECT_FACTORS, label_group, label_map_iou, localization, map_iou,
                                              object_masks, temporal_structure)
from backend.evaluation.metrics import factor_codes, most_active_latents, random_sigma_label, reconstruction, sigma_label
from backend.evaluation.report import write_report, write_shipped_section
from backend.io import write_json
from backend.method.encodings import DENSE_VARIANTS, VARIANTS
from backend.serving.bundle import Bundle
from backend.serving.icons import EFFECTS_FILE, ICON_FILE
from backend.serving.opener import attach_model
from backend.shapes.classify import load_classifier
from backend.shapes.render import FACTOR_VALUES

log = logging.getLogger(__name__)

TEST_SEED = 1_000_000  # test captions and seeds start here, far from the training ones
# The shipped bundle's held-out captions and seeds: its atlas and training use 0 to 1 999, the variants' tests 10^6 on, the
# edits 3·10^6 on and the uploads 7·10^9 on.
SHIPPED_SEED = 5_000_000


def _list(text: str, kind=str) -> list:
    return [kind(x.strip()) for x in text.split(",") if x.strip()]


DENSE_SUFFIX = "+dense"  # "residualized+dense16": the residualized variant with 16 dense directions (backend/method/dense_part.py)


def variant_settings(name: str) -> dict:
    """The build settings a variant name stands for: an encoding variant, or "<residualized or concat>+dense<m>"."""
    if name in VARIANTS:
        return {"variant": name, "dense_directions": 0}
    dense = re.fullmatch(rf"({'|'.join(DENSE_VARIANTS)}){re.escape(DENSE_SUFFIX)}([1-9][0-9]*)", name)
    if not dense:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}, or "
                         f"{' or '.join(DENSE_VARIANTS)}{DENSE_SUFFIX}<m> (m ≥ 1)")
    return {"variant": dense[1], "dense_directions": int(dense[2])}


@dataclass
class EvaluateConfig:
    """The evaluation's settings; each field is a command-line option of the same name."""

    model: str = option("checkpoints/shapes-model", "shapes model directory")
    work_dir: str = option("eval.work", "trajectories, SAEs and per-run results; a rerun resumes from them")
    out: str = option("docs", "directory for EVALUATION.md and its plots")
    sites: str = option("up_ft1,up_ft3", "comma-separated UNet sites")
    variants: str = option(",".join(VARIANTS), f"comma-separated SAE input variants; residualized{DENSE_SUFFIX}<m> also takes the rows' "
                                               "top m principal directions out of the SAE's input")
    seeds: str = option("0,1,2", "comma-separated SAE seeds, one SAE per variant and seed")
    train_images: int = option(400, "shapes captions the SAEs train on; also the atlas that labels latents")
    test_images: int = option(64, "other captions, for reconstruction measured on unseen images")
    num_steps: int = option(20, "DDIM steps per image (all recorded)")
    guidance_scale: float = option(4.0, "classifier-free guidance scale")
    n_latents: int = option(1024, "SAE latents (the same budget for every variant)")
    k: int = option(32, "active latents per row")
    global_latents: int = option(64, "global_local variant: image-level latents")
    global_k: int = option(4, "global_local variant: active image-level latents per image")
    epochs: int = option(3, "passes over the training trajectories")
    sigma_latents: int = option(256, "σ_label is measured over this many most active latents")
    steer_factors: str = option("colour,background", "factors whose labelled latents are steered")
    strengths: str = option("3,10,30", "add strengths (units of the latent's typical activation), whole schedule")
    window_strength: float = option(10.0, "add strength for the early / middle / late window trials")
    targets_per_factor: int = option(2, "target values per steered factor (those with the purest latents)")
    images_per_target: int = option(2, "images steered per target value and condition")
    concept_factors: str = option("colour,shape,background", "factors whose values Bundle.contrast is asked to find")
    concept_captions: int = option(4, "captions per set (with / without the value) for each found value, at one seed")
    bundle: str = option("", "a built bundle (e.g. checkpoints/shapes-bundle): measure it as it ships on fresh prompts (every "
                             "measure, at the top of <out>/EVALUATION.md; its concept edits, <out>/EDITS.md) instead of training SAEs")
    edit_factors: str = option(",".join(EDIT_FACTORS), "--bundle: factors whose values the edits aim at")
    edit_trials: int = option(16, "--bundle: fresh base images per factor, each edited by every mechanism")
    upload_factors: str = option(",".join(UPLOAD_FACTORS), "--bundle: factors whose values the edits of rendered uploads aim at")
    upload_trials: int = option(16, "--bundle: rendered uploads per factor, each inverted and edited by every mechanism")
    shipped_images: int = option(96, "--bundle: fresh captions on which the bundle's reconstruction and localization are measured")

    def run_settings(self) -> dict:
        """What a finished run's result depends on, apart from its site, variant and seed."""
        where = {"work_dir", "out", "sites", "variants", "seeds"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in where}

    def build_config(self, site: str, work: Path, **overrides) -> BuildConfig:
        values = dict(model=self.model, out=str(work / "bundle"), work_dir=str(work), site=site, shapes_prompts=self.train_images,
                      num_steps=self.num_steps, guidance_scale=self.guidance_scale, n_latents=self.n_latents, k=self.k,
                      epochs=self.epochs, images_per_shard=100, batch_size=16, global_latents=self.global_latents, global_k=self.global_k)
        return BuildConfig(**(values | overrides))

    def command(self) -> str:
        """The command line that reproduces these settings: the options that differ from their defaults."""
        defaults = EvaluateConfig()
        changed = [(name, value) for name, value in dataclasses.asdict(self).items()
                   if value != getattr(defaults, name) and name not in ("work_dir", "out")]
        return " ".join(["python -m backend.evaluate", *(f"--{name.replace('_', '-')} {value}" for name, value in changed)])


def parse_config(argv=None) -> EvaluateConfig:
    parser = config_parser(EvaluateConfig, "python -m backend.evaluate", __doc__)
    config = EvaluateConfig(**vars(parser.parse_args(argv)))
    if config.num_steps < 3:
        parser.error("--num-steps must be at least 3: steering windows are the schedule's thirds")
    for site in _list(config.sites):
        if site not in SITE_MODULES:
            parser.error(f"unknown site {site!r}; choose from {', '.join(SITE_MODULES)}")
    for variant in _list(config.variants):
        try:
            variant_settings(variant)
        except ValueError as err:
            parser.error(str(err))
    if config.concept_captions < 2:
        parser.error("--concept-captions must be at least 2: each set needs two images for an interval")
    for factor in _list(config.concept_factors) + _list(config.edit_factors):
        if factor not in FACTOR_VALUES:
            parser.error(f"unknown factor {factor!r}; choose from {', '.join(FACTOR_VALUES)}")
    return config


def link_shared(shared: Path, run_work: Path) -> None:
    """Give a run's work directory the site's collected trajectories and dynamics, by symlink."""
    run_work.mkdir(parents=True, exist_ok=True)
    for name in ("collect", "collect.settings.json", "dynamics.safetensors", "dynamics.settings.json"):
        link = run_work / name
        if not link.exists():
            link.symlink_to((shared / name).resolve())


def purity(bundle: Bundle, count: int) -> dict:
    """σ_label per factor over the most active latents, the random-image baseline, and label coverage."""
    tables = bundle.atlas
    chosen = most_active_latents(tables["max"], count)
    codes = factor_codes([image.get("factors", {}) for image in bundle.images], FACTOR_VALUES)
    labelled = [label for label in bundle.labels if label.get("factor")]
    return {
        "sigma_label": {name: sigma_label(tables["top_image_id"][chosen], labels) for name, labels in codes.items()},
        "sigma_random": {name: random_sigma_label(labels) for name, labels in codes.items()},
        "labelled_share": len(labelled) / bundle.n_latents,
        "labelled_purity": sum(label["purity"] for label in labelled) / max(1, len(labelled)),
    }


def where_and_when(bundle: Bundle, test: dict[str, torch.Tensor], classifier) -> dict:
    """Localization against object masks on the test images (and the maps of each image's own labels, as the classifier
    reads its factors), map IoU on the atlas, temporal structure (localization.py)."""
    grid = tuple(bundle.manifest["shapes"]["grid"])
    with torch.no_grad():
        codes = bundle.codes(test["traj"]).reshape(len(test["thumbnails"]), grid[0] * grid[1], bundle.n_latents)
    paired = torch.zeros(bundle.n_latents, dtype=torch.bool)
    paired[list(bundle.signed_pairs(range(bundle.n_latents)))] = True
    masks = object_masks(test["thumbnails"], grid)
    located = localization(codes, masks, bundle.labels, bundle.is_global, paired)
    readings = classifier.predict(test["thumbnails"].permute(0, 3, 1, 2).float() / 255)
    label_maps = {factor: label_map_iou(codes, masks, bundle.labels, bundle.is_global, readings, factor) for factor in OBJECT_FACTORS}
    object_latents = [j for j, label in enumerate(bundle.labels) if label_group(label) == "object" and not bundle.is_global[j]]
    atlas = bundle.atlas
    maps = (atlas["top_image_id"], atlas["top_image_map"], object_masks(bundle.thumbnails, grid))
    by_factor = {factor: map_iou(*maps, [j for j in object_latents if bundle.labels[j]["factor"] == factor], relative=DAAM_THRESHOLD)
                 for factor in OBJECT_FACTORS}
    return {"localization": located, "map_iou_object": map_iou(*maps, object_latents),
            "map_iou_object_daam": map_iou(*maps, object_latents, relative=DAAM_THRESHOLD), "map_iou_daam_by_factor": by_factor,
            "label_map_iou_daam": label_maps,
            "temporal": temporal_structure(bundle.temporal_profiles.trajectory, atlas["frequency"] > 0)}


def cpu_device() -> str:
    """The machine the evaluation ran on, as the reports name it."""
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def measure(bundle: Bundle, test: dict[str, torch.Tensor], classifier, cfg: "EvaluateConfig") -> dict:
    """Every measure of a bundle with its model attached: reconstruction of the test trajectories, dead latents, purity,
    where and when latents fire, steering and ablation beside prompting, and concept finding."""
    result = reconstruction(bundle.encoding, bundle.sae, test["traj"])
    result["dead_fraction_train"] = float((bundle.atlas["frequency"] == 0).float().mean())
    result |= purity(bundle, cfg.sigma_latents)
    result |= where_and_when(bundle, test, classifier)
    result["trials"] = steering_trials(bundle, classifier, _list(cfg.steer_factors), _list(cfg.strengths, float),
                                       cfg.window_strength, cfg.targets_per_factor, cfg.images_per_target)
    result["concepts"] = concept_hits(bundle, _list(cfg.concept_factors), cfg.concept_captions, seeds=(0,), top=CONCEPT_TOP)
    return result


def test_trajectories(collected: Path) -> dict[str, torch.Tensor]:
    """The trajectories and thumbnails of a collect stage's shards, concatenated."""
    shards = list(read_shards(collected))
    return {"traj": torch.cat([shard["traj"].float() for shard in shards]), "thumbnails": torch.cat([shard["thumbnails"] for shard in shards])}


class Evaluation:
    """The runs of one evaluation, sharing the model, the classifier and the work directory."""

    def __init__(self, config: EvaluateConfig):
        self.config = config
        self.work = Path(config.work_dir)
        self.model = load_model(config.model, device="cpu")
        self.classifier = load_classifier()
        training = Path(config.model) / "training.json"  # written by backend.shapes.train's export: which step the weights are
        self.model_training = json.loads(training.read_text()) if training.is_file() else {}
        self.settings = config.run_settings() | {"model_training": self.model_training}  # new weights at the same path count

    def check_work_dir(self) -> None:
        """Refuse a work directory whose trajectories and runs were made with other settings or weights."""
        path = self.work / "settings.json"
        if path.exists() and json.loads(path.read_text()) != self.settings:
            raise ExplorerError(f"{self.work} holds an evaluation made with other settings or model weights ({path.name}); "
                                "pass a new --work-dir or delete it.")
        write_json(path, self.settings)

    def prepare_site(self, site: str) -> tuple[Path, dict[str, torch.Tensor], list[float]]:
        """Training trajectories and dynamics (shared by the site's runs), and the test trajectories and images."""
        shared = self.work / site / "train"
        summary = Build(self.config.build_config(site, shared, stages="collect,dynamics"), self.model).run()
        test = self.work / site / "test"
        Build(self.config.build_config(site, test, shapes_prompts=self.config.test_images, seed=TEST_SEED, stages="collect"),
              self.model).run()
        return shared, test_trajectories(test / "collect"), summary["r2_per_step"]

    def run_one(self, site: str, variant: str, seed: int, shared: Path, test: dict[str, torch.Tensor]) -> dict:
        """Train and measure one SAE; its result file makes a rerun skip it."""
        cfg = self.config
        run_work = self.work / site / f"{variant}-seed{seed}"
        result_path = run_work / "result.json"
        if result_path.exists():
            return json.loads(result_path.read_text())
        started = time.time()
        link_shared(shared, run_work)
        Build(cfg.build_config(site, run_work, **variant_settings(variant), sae_seed=seed, stages="train,atlas"), self.model).run()
        bundle = Bundle.load(run_work / "bundle")
        bundle.attach_model(self.model)
        result = {"site": site, "variant": variant, "seed": seed} | measure(bundle, test, self.classifier, cfg)
        result["seconds"] = round(time.time() - started, 1)
        write_json(result_path, result)
        return result

    def run(self) -> dict:
        cfg = self.config
        self.check_work_dir()
        results = {"config": dataclasses.asdict(cfg), "device": cpu_device(),
                   "model_training": self.model_training, "command": cfg.command(), "r2_per_step": {}, "runs": []}
        for site in _list(cfg.sites):
            shared, test, results["r2_per_step"][site] = self.prepare_site(site)
            for variant in _list(cfg.variants):
                for seed in _list(cfg.seeds, int):
                    log.info("site %s, variant %s, seed %d", site, variant, seed)
                    results["runs"].append(self.run_one(site, variant, seed, shared, test))
        write_json(self.work / "results.json", results)
        write_report(results, Path(cfg.out))
        return results


def measures_digest() -> str:
    """A digest of the evaluation's code: a kept result of the shipped bundle is measured again when a measure changes."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()[:16]


def evaluate_shipped(config: EvaluateConfig) -> dict:
    """Every measure of a built bundle as it ships (`measure`), on `shipped_images` fresh captions collected with its own
    model, site and schedule; written at the top of <out>/EVALUATION.md. The result file makes a rerun skip the work."""
    bundle = Bundle.load(config.bundle)
    notice = attach_model(bundle, device="cpu")
    if notice:
        raise ExplorerError(f"Measuring a bundle needs its model: {notice}")
    work, schedule = Path(config.work_dir) / "shipped", bundle.manifest["schedule"]
    measured_by = ("shipped_images", "sigma_latents", "steer_factors", "strengths", "window_strength", "targets_per_factor",
                   "images_per_target", "concept_factors", "concept_captions")
    settings = {"bundle": bundle.manifest["files"], "config": {name: getattr(config, name) for name in measured_by},
                "measures": measures_digest()}
    path = work / "result.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    if done.get("settings") != settings:
        started = time.time()
        collect = BuildConfig(model=bundle.manifest["model"]["source"], out=str(work / "bundle"), work_dir=str(work / "test"),
                              site=bundle.manifest["site"], shapes_prompts=config.shipped_images, seed=SHIPPED_SEED,
                              num_steps=int(schedule["num_steps"]), guidance_scale=float(schedule["guidance_scale"]),
                              images_per_shard=100, batch_size=16, stages="collect")
        Build(collect, bundle.generator.model).run()
        result = measure(bundle, test_trajectories(work / "test" / "collect"), load_classifier(), config)
        done = {"settings": settings, "result": result | {"seconds": round(time.time() - started, 1)}}
        write_json(path, done)
    sae = bundle.manifest["sae"]
    dense = f", {sae['dense_directions']} dense directions" if sae.get("dense_directions") else ""
    write_shipped_section(done["result"], config.bundle, f"{sae['n_latents']} latents, k = {sae['k']}{dense}", config.shipped_images,
                          SHIPPED_SEED, config.window_strength,
                          config.command(), cpu_device(), Path(config.out) / "EVALUATION.md")
    return done["result"]


def evaluate_edits(config: EvaluateConfig) -> tuple[dict, dict]:
    """Concept edits on a built bundle, of generated images (edits.py) and of rendered uploads (uploads.py): a result
    file per factor in the work directory, so a rerun resumes."""
    bundle = Bundle.load(config.bundle)
    notice = attach_model(bundle, device="cpu")
    if notice:
        raise ExplorerError(f"Edits need the bundle's model: {notice}")
    classifier, work = load_classifier(), Path(config.work_dir)
    drawn_after = (ICON_FILE, EFFECTS_FILE)  # icons and effect labels change no edit: redrawing them keeps the results
    files = {k: v for k, v in bundle.manifest["files"].items() if k not in drawn_after}

    def measured(kind: str, factors: str, trials: int, mechanisms: dict, measure) -> list[dict]:
        settings = {"bundle": files, "trials": trials, "mechanisms": list(mechanisms)}  # a changed mechanism is renamed or added
        rows = []
        for factor in tqdm(_list(factors), desc=f"{kind} trials", unit="factor"):
            path = work / kind / f"{factor}.json"
            done = json.loads(path.read_text()) if path.exists() else {}
            if done.get("settings") != settings:
                done = {"settings": settings, "rows": measure(bundle, classifier, [factor], trials)}
                write_json(path, done)
            rows += done["rows"]
        return rows

    table = edit_table(measured("edits", config.edit_factors, config.edit_trials, MECHANISMS, edit_trials))
    uploads = upload_table(measured("uploads", config.upload_factors, config.upload_trials, UPLOAD_MECHANISMS, upload_trials))
    write_edit_report(table, uploads, config.command(), cpu_device(), Path(config.out) / "EDITS.md")
    return table, uploads


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = parse_config(argv)
    try:
        if config.bundle:
            evaluate_shipped(config)
            evaluate_edits(config)
        else:
            Evaluation(config).run()
    except ExplorerError as err:
        log.error("%s", err)
        raise SystemExit(2) from None
    print(f"wrote {Path(config.out) / ('EVALUATION.md and EDITS.md' if config.bundle else 'EVALUATION.md')}")


if __name__ == "__main__":
    main()
