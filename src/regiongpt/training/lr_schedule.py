"""The learning-rate curve the recipe's schedules share (the training steps' and the region pretraining's)."""

from __future__ import annotations

import math


def cosine_factor(progress: float, floor: float) -> float:
    """A half cosine from 1 at ``progress`` 0 to ``floor`` at ``progress`` 1."""
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
