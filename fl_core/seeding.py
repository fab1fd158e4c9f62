"""Deterministic seed derivation for the ML side (never for key material).

A federation has one root seed; every random choice (initial weights, a silo's shuffling in a
round, a data split) gets its own seed derived from the root and a label path, so that adding a
silo or a round never shifts the randomness of the others.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def derive_seed(root: int, *labels: str | int) -> int:
    """A 63-bit seed determined by `root` and the label path, e.g. ``derive_seed(7, "train", 3, "cleveland")``."""
    text = "\x1f".join([str(int(root)), *(str(label) for label in labels)])
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def numpy_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def torch_rng(seed: int) -> torch.Generator:
    import torch  # here: code that only derives seeds does not load torch

    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
