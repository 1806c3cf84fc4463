"""Shared test helpers: a tiny export file with non-trivial weights (no training needed)."""
import contextlib
import json
import os

import torch
from safetensors.torch import save_file

from dvdp_hr.export import FORMAT, schedule_dict
from dvdp_hr.train.config import load_config
from dvdp_hr.train.setup import build_model, build_schedule

TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny_cpu.yaml")


def tiny_export(path, seed: int = 0, scale: float = 0.05, overrides=()) -> str:
    """An export of the tiny preset whose weights are perturbed (a fresh UNet's zero-initialised output
    layer would make every sample the same grey image)."""
    cfg = load_config(TINY, list(overrides))
    model = build_model(cfg, build_schedule(cfg))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    info = {"format": FORMAT, "model": cfg.to_dict()["model"], "schedule": schedule_dict(cfg.to_dict())}
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": FORMAT, "dvdp_hr": json.dumps(info)})
    return str(path)


class _FakeLayers(torch.nn.Module):
    """A small local feature network (16-d), in place of Inception's layers (no weights download here)."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
        self.lin = torch.nn.Linear(8 * 4 * 4, 16)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=generator))

    def forward(self, x):
        h = torch.tanh(self.conv(x))
        return self.lin(torch.nn.functional.adaptive_avg_pool2d(h, 4).flatten(1))[:, :, None, None]


class _FakeInception(torch.nn.Module):
    """The interface clean-fid uses of inception-2015-12-05.pt: `.layers.forward(x)`."""

    def __init__(self):
        super().__init__()
        self.layers = _FakeLayers()

    def forward(self, x):
        return self.layers(x)


@contextlib.contextmanager
def one_thread():
    """Torch on one thread, as in the launched ranks (OMP_NUM_THREADS=1): CPU kernels split their float32
    sums by thread, so an in-process reference must use the same count to compare to the last bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fake_inception(path) -> str:
    torch.jit.script(_FakeInception()).save(str(path))
    return str(path)


def image_folder(path, count: int, seed: int, size: int = 32, shift: float = 0.0) -> str:
    """`count` smooth random RGB PNGs (bilinear-upsampled 8x8 noise), brightness `shift`."""
    import numpy as np
    from PIL import Image

    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        base = Image.fromarray(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        pixels = np.clip(np.asarray(base).astype(np.float64) * (1 - shift / 255) + shift, 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(path, f"img{i:04d}.png"))
    return str(path)
