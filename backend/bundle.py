"""The public name of bundles (DESIGN.md, Public API); the code lives in backend.serving.bundle."""

from backend.serving.bundle import Bundle

__all__ = ["Bundle"]
