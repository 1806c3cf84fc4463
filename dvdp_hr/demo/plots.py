"""The demo's figures: training loss per stage against training FLOPs, and the sample grids of
both arms beside held-out photographs (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import numpy as np

from .flops import step_images


def _pyplot():
    try:
        import matplotlib
    except ImportError as exn:
        raise RuntimeError("the demo's plots need matplotlib: pip install -e '.[demo]' (make demo does)") from exn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smoothed(values: list[float], window: int = 25) -> np.ndarray:
    """Trailing mean over up to `window` points (the first points average what exists)."""
    sums = np.cumsum(np.asarray(values, dtype=np.float64))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    lagged = np.concatenate([np.zeros(window), sums])[:len(values)]
    return (sums - lagged) / counts


def stage_curves(losses: list[dict], per_image_flops: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{stage: (cumulative training TFLOPs at each of its steps, smoothed loss)}."""
    points: dict[int, tuple[list, list]] = {}
    flops = 0
    for record, images in step_images(losses):
        flops += images * per_image_flops[record["stage"]]
        xs, ys = points.setdefault(record["stage"], ([], []))
        xs.append(flops / 1e12)
        ys.append(record["loss"])
    return {k: (np.asarray(xs), smoothed(ys)) for k, (xs, ys) in sorted(points.items())}


def loss_figure(arms: list[dict], path: str) -> str:
    """One panel per arm: {label, losses, per_image_flops, resolutions}."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(arms), figsize=(5.5 * len(arms), 4), sharex=True, squeeze=False)
    for ax, arm in zip(axes[0], arms):
        for k, (x, y) in stage_curves(arm["losses"], arm["per_image_flops"]).items():
            ax.plot(x, y, label=f"stage {k}: {arm['resolutions'][k]} px")
        ax.set(title=arm["label"], xlabel="training denoiser TFLOPs", ylabel="loss (trailing mean of 25 steps)",
               yscale="log")
        ax.yaxis.set_minor_formatter(plt.NullFormatter())  # decade labels only
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def tile(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """uint8 [N, H, W, C] -> one [rows*H, columns*W, C] mosaic (the first rows x columns images)."""
    rows = max(1, min(len(images), columns * columns) // columns)
    chosen = images[:rows * columns]
    n, h, w, c = chosen.shape
    return chosen.reshape(rows, columns, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, columns * w, c)


def grids_figure(panels: list[tuple[str, np.ndarray]], path: str) -> str:
    """Side-by-side mosaics (title, uint8 NHWC images): the first 64 images of each."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
    for ax, (title, images) in zip(axes[0], panels):
        ax.imshow(tile(images), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
