"""Attention: SDPA against the textbook formula, backend choice, xformers fallback."""

import logging
import sys
import types

import pytest
import torch

from dvdp_hr.models import attention
from dvdp_hr.models.attention import SelfAttention, multihead_attention, resolve_backend


def reference_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head, written out."""
    b, n, c3 = qkv.shape
    d = c3 // 3 // heads
    q, k, v = qkv.view(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, heads * d)


@pytest.fixture(autouse=True)
def fresh_probe(monkeypatch):
    monkeypatch.setattr(attention, "_PROBED", {})


def test_sdpa_matches_formula():
    qkv = torch.randn(2, 37, 3 * 48)
    torch.testing.assert_close(multihead_attention(qkv, 3, "sdpa"), reference_attention(qkv, 3),
                               atol=1e-5, rtol=1e-5)


def test_block_is_identity_at_init_and_mixes_tokens_after():
    block = SelfAttention(32, head_channels=16, norm_groups=8, backend="sdpa")
    x = torch.randn(2, 32, 4, 4)
    torch.testing.assert_close(block(x), x)
    torch.nn.init.normal_(block.proj.weight)
    y = block(x)
    x2 = x.clone()
    x2[:, :, 0, 0] += 1.0  # one token changes: every other token's output changes too
    assert not torch.allclose(block(x2)[:, :, 3, 3], y[:, :, 3, 3])


def test_block_matches_reference_computation():
    torch.manual_seed(0)
    block = SelfAttention(32, head_channels=8, norm_groups=8, backend="sdpa")
    torch.nn.init.normal_(block.proj.weight, std=0.1)
    x = torch.randn(2, 32, 4, 6)
    tokens = block.norm(x).flatten(2).transpose(1, 2)
    out = block.proj(reference_attention(block.qkv(tokens), 4))
    expected = x + out.transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_sdpa_gradients_match_formula():
    qkv = torch.randn(1, 10, 3 * 16, requires_grad=True)
    g1, = torch.autograd.grad(multihead_attention(qkv, 2, "sdpa").sum(), qkv)
    g2, = torch.autograd.grad(reference_attention(qkv, 2).sum(), qkv)
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-5)


def test_auto_falls_back_to_sdpa_with_one_log_line(caplog):
    if attention._xformers_failure(torch.device("cpu")) is None:
        pytest.skip("xformers runs on CPU here")
    with caplog.at_level(logging.INFO, logger="dvdp_hr.models.attention"):
        assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
        assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    lines = [r.message for r in caplog.records]
    assert len(lines) == 1 and "SDPA" in lines[0]


def test_forced_xformers_unavailable_is_a_clear_error():
    if attention._xformers_failure(torch.device("cpu")) is None:
        pytest.skip("xformers runs on CPU here")
    with pytest.raises(RuntimeError, match="attention='xformers' was forced"):
        resolve_backend("xformers", torch.device("cpu"))
    with pytest.raises(ValueError, match="attention="):
        resolve_backend("flash", torch.device("cpu"))


def test_broken_xformers_install_falls_back(monkeypatch):
    """xformers 0.0.35 imports against torch 2.11+cu130 but its kernels are missing."""
    def missing_kernel(*args, **kwargs):
        raise NotImplementedError("No operator found for `memory_efficient_attention_forward`")

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = missing_kernel
    package = types.ModuleType("xformers")
    package.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    assert "No operator found" in attention._PROBED["cpu"]
    block = SelfAttention(16, 8, 4, backend="auto")
    assert block(torch.randn(1, 16, 2, 2)).shape == (1, 16, 2, 2)


@pytest.mark.gpu
def test_xformers_matches_sdpa_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    device = torch.device("cuda")
    if attention.xformers_failure(device) is not None:
        pytest.skip(f"xformers does not run here: {attention.xformers_failure(device)}")
    qkv = torch.randn(2, 256, 3 * 512, device=device, dtype=torch.bfloat16)
    torch.testing.assert_close(multihead_attention(qkv, 8, "xformers"),
                               multihead_attention(qkv, 8, "sdpa"), atol=2e-2, rtol=2e-2)
