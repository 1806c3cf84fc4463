"""Learning rate as a function of images seen: linear warmup, then constant/cosine/linear decay."""
from __future__ import annotations

import math


def learning_rate(images: int, optim, max_images: int) -> float:
    base, warm = optim.lr, optim.warmup_images
    if warm > 0 and images < warm:
        return base * (images + 1) / warm
    if optim.decay == "constant":
        return base
    span = max(max_images - warm, 1)
    progress = min(max(images - warm, 0) / span, 1.0)
    floor = base * optim.min_lr_ratio
    if optim.decay == "cosine":
        return floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (base - floor) * (1.0 - progress)
