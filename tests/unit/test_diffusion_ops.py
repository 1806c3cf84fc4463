"""Operator identities of dvdp-math.md s1, checked exactly on matrices."""
import torch

from dvdp_hr.diffusion import detail, down, lowpass, up
from gaussian_oracle import linear_map

N = 8


def matrices(levels: int = 1):
    d = linear_map(lambda x: down(x, levels), N * N, N)
    u = linear_map(lambda y: up(y, levels), (N >> levels) ** 2, N >> levels)
    return d, u


def test_down_up_is_identity_and_up_is_adjoint():
    for levels in (1, 2, 3):
        d, u = matrices(levels)
        assert torch.allclose(d @ u, torch.eye(d.shape[0], dtype=d.dtype))
        assert torch.allclose(u, d.T)


def test_white_noise_stays_white_under_down():
    d, _ = matrices(2)
    assert torch.allclose(d @ d.T, torch.eye(d.shape[0], dtype=d.dtype))  # Cov(D eps) = D D^T = I


def test_projectors_split_orthogonally():
    p, q = linear_map(lowpass, N * N, N), linear_map(detail, N * N, N)
    eye = torch.eye(N * N, dtype=p.dtype)
    assert torch.allclose(p @ p, p) and torch.allclose(p, p.T)
    assert torch.allclose(p + q, eye)
    assert torch.allclose(p @ q, torch.zeros_like(p), atol=1e-12)


def test_k_level_down_matches_repeated_down_and_pixel_units():
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert torch.allclose(down(x, 2), down(down(x)))
    assert torch.allclose(down(x, 2), 4 * torch.nn.functional.avg_pool2d(x, 4))
