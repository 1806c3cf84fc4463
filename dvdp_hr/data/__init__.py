"""Data pipeline: per-resolution WebDataset shard sets and the resumable stage stream.

    from dvdp_hr.data import StageStream, stage_urls, manifest_digest, band_variances

Names are imported on first use (webdataset imports torch, ~2 s), so that make_shards' image
workers, which need only dvdp_hr.data.images, start without loading torch.
"""

_LAZY = {
    "StageStream": ".stream",
    "stage_urls": ".shards",
    "manifest_digest": ".shards",
    "band_variances": ".band_stats",
    "BandStats": ".band_stats",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
