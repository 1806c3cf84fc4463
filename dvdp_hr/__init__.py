"""dvdp_hr: high-resolution image diffusion with the dimensionality-varying diffusion process.

`load_pretrained(path)` returns (model, schedule) from a `dvdp-hr export` file without DeepSpeed.
Importing the package imports neither DeepSpeed nor torch.distributed.
"""

__version__ = "0.1.0"


def load_pretrained(path, device="cpu"):
    """(model, schedule) from an export file; sample with dvdp_hr.diffusion.sample(model.predict_x0, schedule, seeds)."""
    from dvdp_hr.export import load_pretrained as _load

    return _load(path, device)


__all__ = ["load_pretrained", "__version__"]
