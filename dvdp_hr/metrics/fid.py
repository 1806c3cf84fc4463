"""FID and KID that do not depend on the number of ranks.

Each rank accumulates, in float64, the count n, the sum s = sum_i f_i and the sum of outer products
S = sum_i f_i f_i^T of its images' features; one all-reduce adds them up. Then mu = s / n and
sigma = (S - n mu mu^T) / (n - 1), numpy's np.cov (ddof = 1) as clean-fid uses it, and FID is
clean-fid's own frechet_distance (Heusel et al. 2017, eq. 6). KID (Binkowski et al. 2018) needs the
features themselves: they are gathered in a fixed order (unit, position), and clean-fid's own
kernel_distance (100 subsets of <= 1000, cubic polynomial kernel, unbiased MMD^2) runs on them with a
seeded numpy generator, so KID too is the same for any world size and equals clean-fid's compute_kid
given the same numpy seed.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from dvdp_hr.distributed.env import all_reduce_sum

from .errors import EvaluationError

KID_SUFFIX = "_kid.npz"  # clean-fid's name for the features file beside the mu/sigma file


class FeatureStats:
    """Float64 count, sum and sum of outer products of features; optionally the features themselves."""

    def __init__(self, keep_features: bool = False):
        self.count, self.sum, self.outer = 0, None, None
        self.keep_features = keep_features
        self.rows: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []

    def add(self, features: torch.Tensor, keys: torch.Tensor | None = None) -> None:
        """features [B, D]; keys [B, 2] int64 (unit, position) fix the features' order when gathered."""
        f = features.detach().double()
        if self.sum is None:
            self.sum = torch.zeros(f.shape[1], dtype=torch.float64, device=f.device)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64, device=f.device)
        self.count += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f
        if self.keep_features:
            self.rows.append(features.detach().float().cpu())
            self.keys.append(keys.cpu() if keys is not None else torch.zeros(f.shape[0], 2, dtype=torch.long))

    def reduced(self, dim: int) -> "FeatureStats":
        """Sums over every rank (collective; `dim`: the feature size, for a rank that saw no image)."""
        out = FeatureStats(self.keep_features)
        local = torch.zeros(1 + dim + dim * dim, dtype=torch.float64)
        if self.count:
            local = torch.cat([torch.tensor([float(self.count)], dtype=torch.float64),
                               self.sum.cpu(), self.outer.cpu().reshape(-1)])
        total = all_reduce_sum(local)
        out.count, out.sum, out.outer = int(total[0]), total[1:1 + dim], total[1 + dim:].reshape(dim, dim)
        if self.keep_features:
            out.rows, out.keys = [gathered_features(self.rows, self.keys, dim)], []
        return out

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """mu and sigma as np.mean / np.cov(rowvar=False) would give them."""
        if self.count < 2:
            raise EvaluationError(f"FID needs at least 2 images, got {self.count}")
        mu = self.sum / self.count
        sigma = (self.outer - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return mu.numpy(), sigma.numpy()

    def features(self) -> np.ndarray:
        return torch.cat(self.rows).numpy() if self.rows else np.zeros((0, 0), np.float32)


def gathered_features(rows: list[torch.Tensor], keys: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Every rank's feature rows, sorted by key (unit, position): the order of a single process."""
    from dvdp_hr.distributed.collect import gather_rows

    local = torch.cat(rows) if rows else torch.zeros(0, dim)
    local_keys = torch.cat(keys) if keys else torch.zeros(0, 2, dtype=torch.long)
    all_rows, all_keys = gather_rows(local), gather_rows(local_keys)
    order = sorted(range(len(all_keys)), key=lambda i: tuple(all_keys[i].tolist()))
    return all_rows[order]


# Heusel et al. 2017, eq. 6: ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), clean-fid's implementation
def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    from cleanfid.fid import frechet_distance as cleanfid_frechet

    return float(cleanfid_frechet(mu1, sigma1, mu2, sigma2))


# Binkowski et al. 2018: unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 over random subsets; clean-fid's
# kernel_distance(feats1 = reference, feats2 = generated), its compute_kid order, with a seeded numpy RNG
def kernel_inception_distance(ref_features: np.ndarray, features: np.ndarray, seed: int = 0) -> float:
    from cleanfid.fid import kernel_distance

    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return float(kernel_distance(ref_features, features))
    finally:
        np.random.set_state(state)


# ---- reference statistics files (clean-fid's format: mu, sigma; features in NAME_kid.npz) ----
def kid_path(stats_path: str) -> str:
    return stats_path[:-len(".npz")] + KID_SUFFIX if stats_path.endswith(".npz") else stats_path + KID_SUFFIX


def save_stats(path: str, stats: FeatureStats, meta: dict, with_features: bool = False) -> list[str]:
    mu, sigma = stats.mean_cov()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(path, mu=mu, sigma=sigma, count=stats.count, **{k: str(v) for k, v in meta.items()})
    written = [path]
    if with_features:
        np.savez_compressed(kid_path(path), feats=stats.features())
        written.append(kid_path(path))
    return written


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
    if not os.path.isfile(path):
        raise EvaluationError(f"reference statistics {path} not found: make them with `dvdp-hr ref-stats "
                              f"--shards DIR --resolution R --out {path}` or use clean-fid's published file "
                              "(README, Evaluation)")
    with np.load(path) as data:
        if "mu" not in data or "sigma" not in data:
            raise EvaluationError(f"{path} has no mu/sigma arrays (keys {sorted(data.files)}): not FID statistics")
        return data["mu"], data["sigma"]


def load_ref_features(path: str) -> np.ndarray | None:
    """Reference features for KID: NAME_kid.npz beside the statistics (clean-fid's layout), or None."""
    candidate = path if path.endswith(KID_SUFFIX) else kid_path(path)
    if not os.path.isfile(candidate):
        return None
    with np.load(candidate) as data:
        return data["feats"]
