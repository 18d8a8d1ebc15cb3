"""The public name of the TopK SAE (DESIGN.md, Public API); the code lives in backend.method.sae."""

from backend.method.sae import TopKSAE

__all__ = ["TopKSAE"]
