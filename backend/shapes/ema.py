"""Exponential moving average of model weights, kept as a flat dict of fp32 tensors (safetensors-ready)."""

import torch
from torch import nn


class EMA:
    """EMA of the weights of named modules; keys are `<module>.<state-dict key>`."""

    def __init__(self, modules: dict[str, nn.Module], decay: float):
        self.decay = decay
        self.shadow = {f"{name}.{k}": v.detach().float().clone()
                       for name, m in modules.items() for k, v in m.state_dict().items()}

    def decay_at(self, step: int) -> float:
        """Warmup: early weights are noise, so average over ~step/10 steps until `decay` is reached."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, modules: dict[str, nn.Module], step: int) -> None:
        """Move the average towards the current weights."""
        weight = 1.0 - self.decay_at(step)
        for name, m in modules.items():
            for k, v in m.state_dict().items():
                shadow = self.shadow[f"{name}.{k}"]
                if v.is_floating_point():
                    shadow.lerp_(v.float(), weight)
                else:
                    shadow.copy_(v)


def module_state(weights: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The state dict of module `name` out of weights keyed `<module>.<state-dict key>`."""
    prefix = name + "."
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
