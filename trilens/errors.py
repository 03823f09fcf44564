"""The errors trilens raises: each says what was wrong and what to do about it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TrilensError(Exception):
    """Base class of every error trilens raises on bad input or a bad environment."""


class ModelLoadError(TrilensError):
    """A model could not be found, read or wrapped."""


class UnsupportedArchitectureError(ModelLoadError):
    """The model's architecture is not one trilens can wrap."""


class SiteError(TrilensError, KeyError):
    """A hook site name or site filter does not exist on this model."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class InputError(TrilensError, ValueError):
    """Inputs (texts, token ids, source/target pairs, labels) are malformed."""


class StoreError(TrilensError):
    """An activation store on disk is missing, different, truncated or corrupted."""


def closest(name: str, valid: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` valid names closest to ``name`` (for 'did you mean' messages)."""
    valid = list(valid)
    hits = difflib.get_close_matches(name, valid, n=n, cutoff=0.5)
    if not hits:
        # Fall back to substring matches so 'resid_post' still suggests full hook names.
        hits = [v for v in valid if name in v][:n]
    return hits
