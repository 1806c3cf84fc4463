"""Distributed sampling by seed: the engine (engine.py), the batch plan (seeds.py), the resumable
sample folder (outdir.py) and the `dvdp-hr sample` driver (run.py)."""
from .engine import autocast_denoiser, default_batch, gather_images, generate, iter_batches, quantize
from .seeds import batch_plan, deal, parse_seeds

__all__ = ["generate", "iter_batches", "gather_images", "quantize", "autocast_denoiser", "default_batch",
           "batch_plan", "deal", "parse_seeds"]
