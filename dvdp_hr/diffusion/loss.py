"""The training loss: the error of the x0 estimate in the network's pixel units, weighted per t
and per band by the chosen weighting (dvdp-math.md s11, with the table of effective weights)."""
import torch

from . import ops
from .prediction import prediction_to_x0
from .process import BandCoefficients
from .schedule import DVDPSchedule, batch_timesteps

LOSS_WEIGHTINGS = ("min_snr", "min_snr_orthonormal", "eps_mse", "edm")


# dvdp-math.md s11: SNR of stage k's pixel-unit image (what the input-normalised network sees)
def pixel_snr(schedule: DVDPSchedule, t: torch.Tensor, k: int) -> torch.Tensor:
    return 4.0**k * schedule.abar[t] / (1 - schedule.abar[t])


# dvdp-math.md s11 (table): loss = w_low mean (P'e)^2 + w_detail mean (Q'e)^2, e = x0_hat - x0 in
# pixel units, means over all coordinates. lambda = pixel SNR, gamma = the attenuation.
def loss_weights(schedule: DVDPSchedule, t, weighting: str, snr_gamma: float = 5.0,
                 sigma_data: float = 0.5) -> BandCoefficients:
    t = batch_timesteps(t, 1)
    k = schedule.stage_of_batch(t)
    snr = pixel_snr(schedule, t, k)
    if weighting == "min_snr":  # Hang et al. 2023 in the network's units: min(lambda, gamma)
        w = snr.clamp(max=snr_gamma)
    elif weighting == "min_snr_orthonormal":  # before issue 11: min(SNR_orth, gamma) 4^k
        w = (snr / 4.0**k).clamp(max=snr_gamma) * 4.0**k
    elif weighting == "eps_mse":  # L_simple: ||eps_hat - eps||^2 = lambda |G_t e|^2 per coordinate
        return BandCoefficients(snr, snr * schedule.gamma(t, k) ** 2)
    elif weighting == "edm":  # EDM's lambda(sigma) = 1/sigma^2 + 1/sigma_data^2, sigma^2 = 1/lambda
        w = snr + 1 / sigma_data**2
    else:
        raise ValueError(f"loss weighting must be one of {list(LOSS_WEIGHTINGS)}, got {weighting!r}")
    return BandCoefficients(w, w)


# dvdp-math.md s11: per-sample weighted loss. eps and v outputs are converted per band
# (prediction_to_x0), so the attenuated band is weighted by its true x0 error; an eps network under
# eps_mse is compared with the noise itself (exact where gamma < gamma_min as well).
def training_loss(schedule: DVDPSchedule, output: torch.Tensor, x0_pixel: torch.Tensor, noise: torch.Tensor,
                  t, prediction: str = "x0", snr_gamma: float = 5.0, y_t: torch.Tensor | None = None,
                  gamma_min: float = 0.1, weighting: str = "min_snr_orthonormal",
                  sigma_data: float = 0.5) -> torch.Tensor:
    k = schedule.stage_of_batch(t)
    dtype = torch.promote_types(output.dtype, torch.float32)  # bf16 outputs: loss in fp32
    x0_stage = schedule.stage_image(x0_pixel, k).to(dtype)
    weights = loss_weights(schedule, batch_timesteps(t, output.shape[0]), weighting, snr_gamma, sigma_data)
    if prediction != "x0" and y_t is None:
        y_t = schedule.q_sample(x0_stage, t, noise.to(dtype))
    if prediction == "eps" and weighting == "eps_mse":
        eps = noise.to(dtype) if noise is not None else _noise_of(schedule, y_t.to(dtype), x0_stage, t, k)
        return (output.to(dtype) - eps).pow(2).flatten(1).mean(1)
    err = prediction_to_x0(schedule, output.to(dtype), y_t, t, prediction, gamma_min) - x0_stage
    if torch.equal(weights.low, weights.detail) or k == schedule.num_stages - 1:
        mse = err.pow(2).flatten(1).mean(1)
        return mse * ops.per_sample(weights.low, mse)
    low = ops.lowpass(err)
    per_band = (ops.per_sample(weights.low, err) * low.pow(2)
                + ops.per_sample(weights.detail, err) * (err - low).pow(2))
    return per_band.flatten(1).mean(1)


# dvdp-math.md s3: eps = (y_t - sqrt(abar_t) G_t z0) / sqrt(1 - abar_t), z0 = 2^k x0
def _noise_of(schedule: DVDPSchedule, y_t: torch.Tensor, x0_stage: torch.Tensor, t, k: int) -> torch.Tensor:
    t = batch_timesteps(t, y_t.shape[0])
    a, sig = schedule.abar[t].sqrt(), (1 - schedule.abar[t]).sqrt()
    mean = ops.band_scale(x0_stage * 2**k, a, a * schedule.gamma(t, k))
    return (y_t - mean) / ops.per_sample(sig, y_t)
