"""The public name of the linear dynamics (DESIGN.md, Public API); the code lives in backend.method.dynamics."""

from backend.method.dynamics import LinearDynamics

__all__ = ["LinearDynamics"]
