"""Forward hooks at named UNet sites, attached as context managers so they never outlive a call."""

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from backend.errors import ExplorerError

# Site names follow the Revelio paper: the mid block and the outputs of the four up blocks.
SITE_MODULES = {
    "bottleneck": "mid_block",
    "up_ft0": "up_blocks.0",
    "up_ft1": "up_blocks.1",
    "up_ft2": "up_blocks.2",
    "up_ft3": "up_blocks.3",
}


def site_module(unet: nn.Module, site: str) -> nn.Module:
    """The submodule whose output is `site`."""
    if site not in SITE_MODULES:
        raise ExplorerError(f"Unknown site {site!r}; choose one of {', '.join(SITE_MODULES)}.")
    try:
        return unet.get_submodule(SITE_MODULES[site])
    except AttributeError as err:
        raise ExplorerError(f"This UNet has no module {SITE_MODULES[site]!r} for site {site!r}.") from err


class SiteHook:
    """Something the sampler runs on a site's output at each step.

    `__call__(step, output, cond)` sees the whole CFG batch (`cond` selects its conditional
    rows) and returns a replacement output, or None to leave it unchanged.
    """

    site: str

    def __call__(self, step: int, output: Tensor, cond: slice) -> Tensor | None:
        raise NotImplementedError


@dataclass(frozen=True)
class RowHooks:
    """The hooks of one sampler run inside a UNet call: its rows of the batch, its step, its conditional rows among them."""

    rows: slice
    step: int
    cond: slice  # relative to `rows`
    hooks: Sequence[SiteHook]


@contextmanager
def attached_rows(unet: nn.Module, parts: Sequence[RowHooks]):
    """Register the hooks of runs batched in one UNet call, each seeing only its rows; always removed on exit.

    Per site, one forward hook walks the parts in order; a hook's replacement of its rows is what
    the next hook of that site sees, as with hooks registered one after another.
    """
    by_site: dict[str, list[tuple[RowHooks, SiteHook]]] = {}
    for part in parts:
        for hook in part.hooks:
            by_site.setdefault(hook.site, []).append((part, hook))
    handles = []
    try:
        for site, hooked in by_site.items():
            def forward_hook(module, args, output, hooked=hooked):
                edited = None
                for part, hook in hooked:
                    current = output if edited is None else edited
                    replaced = hook(part.step, current[part.rows], part.cond)
                    if replaced is not None:
                        edited = output.clone() if edited is None else edited
                        edited[part.rows] = replaced
                return edited  # None leaves the output as it is
            handles.append(site_module(unet, site).register_forward_hook(forward_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def attached(unet: nn.Module, hooks: Iterable[SiteHook], step: int, cond: slice):
    """Register `hooks` for one UNet call at sampler step `step` over the whole batch; always removed on exit."""
    return attached_rows(unet, [RowHooks(slice(None), step, cond, list(hooks))])


@dataclass
class TrajectoryRecorder(SiteHook):
    """Records the conditional half of a site's output at the recorded sampler steps."""

    site: str
    steps: Sequence[int]
    records: list[Tensor] = field(default_factory=list)  # one [B, C, H, W] per recorded step, in order, on the UNet's device

    def __call__(self, step: int, output: Tensor, cond: slice) -> None:
        if step in self.steps:
            self.records.append(output[cond].detach().to(torch.float32, copy=True))  # stays on the device: no sync per step

    @property
    def grid(self) -> tuple[int, int]:
        """(H, W) of the site's feature map."""
        return tuple(self.records[0].shape[-2:])

    def trajectories(self) -> Tensor:
        """Recorded activations per image and position: Tensor[B, H*W, T, C]."""
        if len(self.records) != len(self.steps):
            raise RuntimeError(f"recorded {len(self.records)} of {len(self.steps)} steps at {self.site}")
        stacked = torch.stack(self.records, dim=1).cpu()  # [B, T, C, H, W]
        b, t, c, h, w = stacked.shape
        return stacked.permute(0, 3, 4, 1, 2).reshape(b, h * w, t, c)


@dataclass
class EditHook(SiteHook):
    """Replaces a site's output by `edit(step, output)` on every row of the batch."""

    site: str
    edit: Callable[[int, Tensor], Tensor | None]

    def __call__(self, step: int, output: Tensor, cond: slice) -> Tensor | None:
        return self.edit(step, output)
