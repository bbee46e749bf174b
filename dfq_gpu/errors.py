"""The exception of bad user input, in a module of its own so that every layer of the package
(tracing, the recipe, the integer network) can raise it without importing the recipe."""

from __future__ import annotations

__all__ = ["DFQError"]


class DFQError(ValueError):
    """Bad input to the DFQ pipeline or to the networks it builds (the message names the problem)."""
