"""Samples one trained arm (its EMA weights) and scores it against held-out photographs: sampling
time and FLOPs, multi-scale SWD (stage 0: final images vs the data), the state of every earlier
stage as it ends (dvdp_hr.metrics.stages) and, with Inception weights, FID/KID."""
from __future__ import annotations

import time

import numpy as np
import torch

from dvdp_hr.metrics.stages import StageDescriptors, stage_report, stage_times, uint8_to_pixels
from dvdp_hr.metrics.swd import SWDConfig, swd
from dvdp_hr.sampling import batch_plan, iter_batches
from dvdp_hr.train.samples import load_model

from .flops import sampling_flops_per_image

SWD = SWDConfig(min_resolution=16)


class _TimedHook:
    """The per-stage descriptor hook, timed so its cost is kept out of the sampling time."""

    def __init__(self, descriptors: StageDescriptors):
        self.descriptors, self.seconds = descriptors, 0.0

    def __call__(self, seeds, stage, t, y):
        start = time.perf_counter()
        self.descriptors.hook(seeds, stage, t, y)
        self.seconds += time.perf_counter() - start


def generate_scored(run_dir: str, reference: np.ndarray, count: int, steps: int, batch: int = 64) -> dict:
    """{images (uint8 NHWC), seconds, flops_per_image, stages: per-stage SWD report}."""
    model, schedule = load_model(run_dir)
    model.eval()
    generated, expected = StageDescriptors(schedule, SWD), StageDescriptors(schedule, SWD)
    hook, images = _TimedHook(generated), []
    start = time.perf_counter()
    for seeds, pixels in iter_batches(model, schedule, batch_plan(range(count), batch), steps=steps, method="ddim",
                                      precision="fp32", on_turning_point=hook):
        images.append(pixels)
    seconds = time.perf_counter() - start - hook.seconds
    images = np.concatenate(images)
    generated.add_final(list(range(count)), images)
    expected.add_reference(range(count), reference[:count], stage_times(schedule), SWD.seed)
    return {"images": images, "seconds": seconds, "flops_per_image": sampling_flops_per_image(model, schedule, steps),
            "stages": {str(k): v for k, v in stage_report(generated, expected).items()}}


def floor_swd(reference: np.ndarray, other: np.ndarray) -> dict:
    """SWD between two disjoint sets of real crops: the best score a model can get at this count."""
    return swd(uint8_to_pixels(other), uint8_to_pixels(reference), SWD)


def inception_scores(inception: str, generated: np.ndarray, reference: np.ndarray) -> dict:
    """FID and KID of generated vs reference images with the user's Inception weights (clean-fid's
    resize); at a few hundred images both are biased upwards: compare the arms, not papers."""
    from dvdp_hr.metrics import fid as F
    from dvdp_hr.metrics.evaluate import image_stats
    from dvdp_hr.metrics.features import load_inception

    device = torch.device("cpu")
    extractor = load_inception(inception, device)
    ours, ref = (image_stats(list(images), extractor, device, keep_features=True) for images in (generated, reference))
    ours, ref = ours.reduced(ours.sum.shape[0]), ref.reduced(ref.sum.shape[0])  # one process: nothing to sum
    return {"fid": F.frechet_distance(*ours.mean_cov(), *ref.mean_cov()),
            "kid": F.kernel_inception_distance(ref.features(), ours.features())}
