"""Exact posterior-mean denoiser for Gaussian data and exact moment propagation through the samplers.

For x0 ~ N(mu, Sigma) every DVDP quantity is linear-Gaussian (dvdp-math.md s7), so the sampler's output
distribution is Gaussian and can be propagated exactly (mean vector, covariance matrix): no Monte Carlo.
The propagation reuses the library's own reverse_walk, step_coefficients, apply_step and turning-point
operators, applied to basis images to obtain their matrices.
"""
import pytest
import torch

from dvdp_hr.diffusion import DVDPSchedule, detail, down, reverse_walk, step_coefficients, up
from dvdp_hr.diffusion.process import apply_step, upsample_at_turning_point
from dvdp_hr.diffusion.sampler import posterior_noise_fn

DT = torch.float64


def smooth_gaussian(size: int = 8, length: float = 1.5, std: float = 0.4, nugget: float = 0.02):
    """A smooth-image Gaussian: squared-exponential covariance over pixel positions, a ramp mean."""
    ij = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1).reshape(-1, 2)
    dist2 = (ij[:, None, :] - ij[None, :, :]).pow(2).sum(-1).to(DT)
    sigma = std**2 * torch.exp(-dist2 / (2 * length**2)) + nugget**2 * torch.eye(size * size, dtype=DT)
    mu = 0.3 * torch.linspace(-1, 1, size, dtype=DT)[None, :].expand(size, size).reshape(-1)
    return mu, sigma


def band_matched_gaussian(size: int, band_variances, root_variance: float, alpha: float = 2.85):
    """A natural-image-like Gaussian on 1 x size x size images: a periodic power-law spectrum
    S(f) ~ (|f|^2 + 1)^(-alpha / 2) (images: alpha ~ 2-3), then each orthonormal band of the pyramid
    (the detail band Q'D_k x of stage k, and the coarsest level) rescaled to the per-coordinate
    variance asked (orthonormal units, band_variances[k] for k = 0 .. K-1 as band_stats.py measures,
    root_variance for the coarsest level, the 1 px root). With the ffhq1024 estimates the band rule
    gives this Gaussian the real run's turning points."""
    f = torch.fft.fftfreq(size, dtype=DT) * size
    spectrum = (f[:, None] ** 2 + f[None, :] ** 2 + 1) ** (-alpha / 2)
    basis = torch.eye(size * size, dtype=DT).reshape(-1, size, size)
    cov = torch.fft.ifft2(torch.fft.fft2(basis) * spectrum).real.reshape(size * size, -1)
    scale = sum(c * b for c, b in zip(_band_gains(cov, size, band_variances, root_variance), _band_projectors(size)))
    mu = 0.3 * torch.linspace(-1, 1, size, dtype=DT)[None, :].expand(size, size).reshape(-1)
    return mu, scale @ cov @ scale.T


def _band_projectors(size: int) -> list[torch.Tensor]:
    """Orthogonal projectors onto U^k Q' D^k (k = 0 .. K-1) and U^K D^K: they sum to the identity."""
    levels = size.bit_length() - 1
    out = []
    for k in range(levels + 1):
        band = (lambda x, k=k: up(detail(down(x, k)), k)) if k < levels else (lambda x: up(down(x, levels), levels))
        out.append(linear_map(band, size * size, size))
    return out


def _band_gains(cov, size, band_variances, root_variance):
    targets = list(band_variances) + [root_variance]
    gains = []
    for projector, target in zip(_band_projectors(size), targets):
        per_coordinate = float(torch.trace(projector @ cov @ projector.T)) / float(torch.trace(projector))
        gains.append((target / per_coordinate) ** 0.5)
    return gains


def linear_map(fn, n_in: int, size_in: int) -> torch.Tensor:
    """Matrix of a linear function of 1xHxW images, from its action on the basis images."""
    basis = torch.eye(n_in, dtype=DT).reshape(n_in, 1, size_in, size_in)
    return fn(basis).reshape(n_in, -1).T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Frechet distance between two Gaussians."""
    def sqrtm(c):
        w, v = torch.linalg.eigh(c)
        return v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T
    root = sqrtm(cov1)
    cross = sqrtm(root @ cov2 @ root)
    return float((mu1 - mu2).pow(2).sum() + torch.trace(cov1 + cov2 - 2 * cross))


class GaussianOracle:
    """E[z0 | y_t] and Var[z0 | y_t] for Gaussian x0, per stage, in orthonormal units."""

    def __init__(self, schedule: DVDPSchedule, mu: torch.Tensor, sigma: torch.Tensor):
        self.schedule, self.size = schedule, schedule.resolution
        self.stage_mean, self.stage_cov = [], []
        for k in range(schedule.num_stages):
            d_k = linear_map(lambda x, k=k: down(x, k), self.size**2, self.size)
            self.stage_mean.append(d_k @ mu)
            self.stage_cov.append(d_k @ sigma @ d_k.T)
        self._cache = {}

    def forward_matrix(self, t: int, k: int) -> torch.Tensor:
        """H with y_t = H z0 + sqrt(v_t) eps (dvdp-math.md s3)."""
        r = self.schedule.stage_resolution(k)
        y = lambda z: self.schedule.q_sample(z / 2**k, torch.full((z.shape[0],), t), torch.zeros_like(z))
        return linear_map(y, r * r, r)

    def gain(self, t: int, k: int):
        """(K, b, posterior covariance): E[z0|y] = K y + b."""
        if (t, k) not in self._cache:
            h, s, m = self.forward_matrix(t, k), self.stage_cov[k], self.stage_mean[k]
            v = float(1 - self.schedule.abar[t])
            gain = s @ h.T @ torch.linalg.inv(h @ s @ h.T + v * torch.eye(len(m), dtype=DT))
            self._cache[(t, k)] = (gain, m - gain @ h @ m, s - gain @ h @ s)
        return self._cache[(t, k)]

    def denoiser(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The sampler contract: pixel-unit x0 estimate at the stage resolution."""
        tt = int(t[0])
        k = self.schedule.stage_of(tt)
        gain, bias, _ = self.gain(tt, k)
        z = y.to(DT).reshape(y.shape[0], -1) @ gain.T + bias
        return (z / 2**k).reshape(y.shape).to(y.dtype)

    def posterior_noise(self, xi: torch.Tensor, y, t: int, k: int) -> torch.Tensor:
        """Noise with covariance exactly Var[z0 | y_t] (the variance_correction callable contract)."""
        w, v = torch.linalg.eigh(self.gain(t, k)[2])
        root = v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T
        return (xi.to(DT).reshape(xi.shape[0], -1) @ root.T).reshape(xi.shape).to(xi.dtype)


def propagate(schedule: DVDPSchedule, oracle: GaussianOracle, method: str = "ancestral", steps=None,
              eta: float = 0.0, variance_correction=None):
    """Exact output mean and covariance of the sampler with the oracle denoiser (no clipping)."""
    eta = 1.0 if method == "ancestral" else eta
    posterior_noise = posterior_noise_fn(schedule, variance_correction)
    r = schedule.stage_resolution(schedule.num_stages - 1)
    mean, cov = torch.zeros(r * r, dtype=DT), torch.eye(r * r, dtype=DT)
    for t, s, k in reverse_walk(schedule, steps):
        if s is None:
            mean, cov = _upsample(schedule, mean, cov, t, r)
            r *= 2
            continue
        c = step_coefficients(schedule, t, s, k, eta)
        gain, bias, _ = oracle.gain(t, k)
        zeros = torch.zeros(r * r, 1, r, r, dtype=DT)
        y_mat = linear_map(lambda b: apply_step(c, b, zeros, zeros), r * r, r)
        z_mat = linear_map(lambda b: apply_step(c, zeros, b, zeros), r * r, r)
        n_mat = linear_map(lambda b: apply_step(c, zeros, zeros, b), r * r, r)
        a = z_mat @ gain + y_mat
        mean = a @ mean + z_mat @ bias
        cov = a @ cov @ a.T + n_mat @ n_mat.T
        if posterior_noise is not None and k < schedule.num_stages - 1:
            z_noise = z_mat @ linear_map(lambda b: posterior_noise(b, None, t, k), r * r, r)
            cov = cov + z_noise @ z_noise.T
    return mean, cov


def _upsample(schedule, mean, cov, t, r):
    zeros = torch.zeros(r * r * 4, 1, 2 * r, 2 * r, dtype=DT)
    u = linear_map(lambda b: upsample_at_turning_point(schedule, b, t, zeros[: b.shape[0]]), r * r, r)
    noise = linear_map(lambda b: upsample_at_turning_point(schedule, torch.zeros(b.shape[0], 1, r, r, dtype=DT), t, b),
                       4 * r * r, 2 * r)
    return u @ mean, u @ cov @ u.T + noise @ noise.T


# The real run's stand-in at 16 px: 5 levels (16 -> 1) like 1024 -> 64, the same global schedule
# (the shift 2 log(16 / 1) equals 2 log(1024 / 64)) and the band variances of configs/ffhq1024.yaml
# (labelled face-image estimates), so the band rule gives the real turning points.
FFHQ_BAND_VARIANCES = (0.0035, 0.0251, 0.192, 1.317)
ROOT_VARIANCE = 256 * 0.07  # the 1 px root: pixel variance 0.07 of an image's mean, orthonormal x 16^2


def real_run_schedules(beta_schedule: str, threshold: float = 0.03, **kwargs):
    """(DVDP 16 -> 1 schedule with band-rule turning points, fixed-resolution 16 px schedule with
    the same abar_t) for one of the real run's schedule choices."""
    from dvdp_hr.diffusion import propose_turning_points

    points = propose_turning_points(16, 1, FFHQ_BAND_VARIANCES, beta_schedule=beta_schedule,
                                    threshold=threshold, shift_base=1)
    dvdp = DVDPSchedule(16, 1, points, beta_schedule=beta_schedule, shift_base=1, **kwargs)
    fixed = DVDPSchedule(16, 16, [], beta_schedule=beta_schedule, shift_base=1, **kwargs)
    return dvdp, fixed


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Small float64 algebra: one thread is fastest and immune to a loaded machine (imported, it
    applies to every test of the importing module)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
