"""The Edit panel: a concept (a label, typed latent ids or the latest Find result) edited into the Steer tab's prompt and seed
where it belongs, or in place of a source concept where that fired (`Generator.edit`); the Your image tab's panel checks and
describes its edits with the same code."""

from dataclasses import dataclass

from PIL import Image

from backend.errors import ExplorerError
from backend.serving.concepts import label_values
from ui.explorer import Explorer
from ui.images import as_array, tint, upscale
from backend.serving.edits import PLACES, check_edit_strength
from ui.state import MAX_SEED, parse_int
from ui.steer import check_guidance, check_prompt, window_of

NONE = "(none)"
WHERE_CHOICES = {"auto": "auto", "object": "object", "background": "background", "everywhere": "all", "where it fired": "fired"}
WHERE_LABELS = {where: label for label, where in WHERE_CHOICES.items()}
DEFAULT_STRENGTH = 4.5
MAX_SPEC_CHARS = 1000


def label_choices(ex: Explorer) -> list[str]:
    """'factor=value' for every value that labels a latent of the bundle, factor by factor."""
    values = label_values(ex.bundle.labels)
    return [f"{factor}={value}" for factor in sorted(values) for value in sorted(values[factor])]


def spec_of(choice, ids, what: str) -> str | None:
    """A concept spec: the text box (latent ids, or a label) when it is not blank, else the dropdown's choice; None for none."""
    for value in (choice, ids):
        if value is not None and not isinstance(value, str):
            raise ExplorerError(f"The {what} is a label like 'colour=red' or latent ids like '12, 40', got {type(value).__name__}.")
        if value and len(value) > MAX_SPEC_CHARS:
            raise ExplorerError(f"The {what} is {len(value)} characters long; use at most {MAX_SPEC_CHARS}.")
    if ids and ids.strip():
        return ids.strip()
    return None if choice in (None, "", NONE) else choice


def concept_name(concept) -> str:
    """A concept's name in a caption: typed ids read as 'latents 12, 40'; labels and Find results keep theirs."""
    return f"latents {concept.name}" if concept.name[:1].isdigit() else concept.name


def count(latents) -> str:
    """'1 latent', '3 latents'."""
    return f"{len(latents)} latent{'s' if len(latents) != 1 else ''}"


def describe(info, asked: str) -> str:
    """What an edit did (an EditInfo): its concepts, strength, whether the codes read the target, and where; `asked`: the where choice."""
    target = concept_name(info.target)
    if info.source:
        moved = (f"**{concept_name(info.source)} → {target}** ({count(info.removed.latents)} of {concept_name(info.source)}"
                 f"{' and the other ' + info.target.factor + ' values' if info.removed != info.source else ''} swapped for {len(info.target.latents)})")
    elif info.removed:  # a label's concept takes the place of the other values of its factor
        moved = f"**→ {target}** ({count(info.target.latents)} in place of {count(info.removed.latents)} of other {info.target.factor} values)"
    else:
        moved = f"**→ {target}** ({count(info.target.latents)} added)"
    if info.reached is None:
        outcome = f"strength {info.strength:g} × s, set by hand (only an automatic strength is checked against the codes)"
    elif info.reached:
        outcome = f"strength {info.strength:g} × s, chosen automatically · the edited run's codes read {target}"
    else:
        outcome = f"did not reach {target} even at strength {info.strength:g} (the largest tried)"
    positions = as_array(info.positions)
    place = f"where {concept_name(info.source or info.target)} fired" if info.where == "fired" else PLACES[info.where]
    return f"{moved} · {outcome} · {place}{' (auto)' if asked == 'auto' else ''}: {int(positions.sum())} of {positions.size} positions"


@dataclass(frozen=True)
class EditRequest:
    """An Edit panel's controls, checked before any model work (the Steer tab's and an upload's)."""

    target: object  # a concept spec: a label, typed latent ids or a Find result
    source: str | None
    strength: float | None  # None: automatic
    window: tuple[int, int]
    where: str  # the choice as shown, e.g. 'where it fired'
    use_found: bool

    @property
    def place(self) -> str:
        """Where, in the generator's words ('fired')."""
        return WHERE_CHOICES[self.where]

    def outputs(self, result) -> tuple[Image.Image, Image.Image, Image.Image, str, float, bool, dict]:
        """Base and edited images, the base with the edited positions tinted, what was done, the strength used and whether it was
        automatic, and the edit's link fields (ViewState's edit_*; a Find result travels as its latents' ids)."""
        info = result.edit
        made = dict(edit_target=", ".join(map(str, info.target.latents)) if self.use_found else self.target, edit_source=self.source,
                    edit_where=self.place, edit_strength=self.strength)
        return (upscale(result.base), upscale(result.steered), tint(result.base, info.positions), describe(info, self.where),
                info.strength, info.automatic, made)


def edit_request(ex: Explorer, start, end, target, target_ids, use_found, found, source, source_ids, where, strength,
                 automatic) -> EditRequest:
    """The panel's step window and controls as an EditRequest; `found` is the latest Find result, the target when `use_found`."""
    window = window_of(ex, start, end)
    if not isinstance(use_found, bool) or not isinstance(automatic, bool):
        raise ExplorerError("'Use the latest Find result' and 'automatic' are true or false.")
    if use_found and not found:
        raise ExplorerError("No Find result yet: find latents for a concept on the Browse tab first, or untick 'Use the latest Find result'.")
    target_spec, source_spec = found if use_found else spec_of(target, target_ids, "target"), spec_of(source, source_ids, "source")
    if target_spec is None:
        raise ExplorerError(f"Choose a target concept, or type its latent ids{': what should the source become?' if source_spec else '.'}")
    if where not in WHERE_CHOICES:
        raise ExplorerError(f"Where to edit is one of {', '.join(WHERE_CHOICES)}, got {where!r}.")
    return EditRequest(target_spec, source_spec, None if automatic else check_edit_strength(strength), window, where, use_found)


def edit(ex: Explorer, prompt, seed, guidance, start, end, target, target_ids, use_found, found, source, source_ids, where, strength,
         automatic) -> tuple[Image.Image, Image.Image, Image.Image, str, float, bool, dict]:
    """A concept edited into the Steer tab's prompt and seed, as `EditRequest.outputs` shows it."""
    prompt, seed, guidance = check_prompt(prompt), parse_int(seed, "Seed", 0, MAX_SEED), check_guidance(guidance)
    asked = edit_request(ex, start, end, target, target_ids, use_found, found, source, source_ids, where, strength, automatic)
    return asked.outputs(ex.generator().edit(prompt, seed, asked.target, asked.source, asked.strength, asked.window, asked.place, guidance))


def controls(ex: Explorer, made: dict | None) -> tuple[str | None, str, str, str, str, float, bool]:
    """The panel's controls for an edit's link fields (None: the panel as it opens): target and source as a dropdown choice
    or typed text, where, strength, automatic; a link's concepts are checked here, before anything runs."""
    made = made or {}
    choices = label_choices(ex)
    picked = []
    for what, spec, empty in (("target", made.get("edit_target"), None), ("source", made.get("edit_source"), NONE)):
        spec = spec_of(None, spec, what)
        if spec is not None:
            ex.bundle.concept(spec)
        picked += [spec, ""] if spec in choices else [empty, spec or ""]
    strength = made.get("edit_strength")
    return (*picked, WHERE_LABELS[made.get("edit_where") or "auto"], DEFAULT_STRENGTH if strength is None else strength, strength is None)
