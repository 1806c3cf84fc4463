"""Measure OUR denoiser's activation memory by running one training (or sampling) step on fake tensors.

Fake tensors (torch._subclasses.FakeTensorMode, device "cpu") carry shapes, dtypes and storages but
no data, so a 1024 px step of the ~120M-parameter UNet costs about a second on a CPU. They are used
instead of the meta device because on meta (torch 2.14) autocast is refused and SDPA falls back to
its math path, which saves the [B, heads, N, N] attention matrix; fake CPU tensors get real CPU
autocast and the fused CPU flash kernel, which saves what the GPU's fused kernels save (q, k, v,
output, logsumexp; never the matrix). CPU and CUDA autocast agree on every op this network uses
(conv/linear in bf16; group_norm is kept in the activation's dtype by models.layers.group_norm).

Two counts per step:
- saved bytes: storages the autograd graph holds at the end of the forward (saved_tensors_hooks),
  deduplicated by storage (q, k and v are views of one qkv tensor) and excluding parameters;
- peak live bytes: the largest total of live non-parameter storages created by any op (a
  TorchDispatchMode sees every op output; a weakref callback sees each storage freed), over the
  forward, loss and backward. Parameter gradients are dropped as soon as they are accumulated
  (ZeRO reduces and frees them bucket by bucket); gradient memory is counted by the state model.
Not seen here: kernel workspaces (cuDNN, flash), the CUDA context and allocator fragmentation;
the planner keeps a reserve for them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import weakref

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from dvdp_hr.diffusion import training_loss
from dvdp_hr.models import ModelConfig, build_denoiser

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def storage_key(t: torch.Tensor) -> int:
    """Identity of a tensor's storage (its StorageImpl address; meta/fake storages have data_ptr 0)."""
    return t.untyped_storage()._cdata


def parameter_keys(model: torch.nn.Module) -> set[int]:
    return {storage_key(p) for p in model.parameters()}


class SavedBytes(contextlib.AbstractContextManager):
    """Bytes of the distinct non-parameter storages autograd saves for backward inside the context."""

    def __init__(self, skip: set[int]):
        self.skip = skip
        self.storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key not in self.skip:
            self.storages[key] = t.untyped_storage().nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.storages.values())

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self._hooks.__exit__(*exc)


class PeakLiveBytes(TorchDispatchMode):
    """Peak of the live bytes of every storage an op creates while the mode is active."""

    def __init__(self, skip: set[int]):
        super().__init__()
        self.skip = skip
        self.live = self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def _freed(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._refs.pop(key, None)

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._refs or key in self.skip:
            return
        nbytes = storage.nbytes()
        # Storages keep their Python object while alive, so the callback fires when the memory is freed.
        self._refs[key] = weakref.ref(storage, lambda _, k=key, n=nbytes: self._freed(k, n))
        self.live += nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        self.peak = max(self.peak, self.live)
        return out


@dataclasses.dataclass
class StepBytes:
    saved: int  # autograd-saved bytes at the end of the forward (0 for sampling)
    peak: int  # peak live bytes over the step


class ProbeModel:
    """A denoiser whose parameters are fake (default) or real, in the run's dtype."""

    def __init__(self, model_cfg: ModelConfig, schedule, precision: str, checkpointing: bool,
                 fake: bool = True):
        self.schedule, self.precision = schedule, precision
        self.dtype = DTYPES[precision]
        self.prediction = model_cfg.prediction
        self.mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
        cfg = dataclasses.replace(model_cfg, grad_checkpointing=checkpointing, compile=False)
        self.model = self._build(cfg)
        for p in self.model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(_drop_grad)
        self.skip = parameter_keys(self.model)

    def _build(self, cfg: ModelConfig) -> torch.nn.Module:
        if self.mode is None:
            return build_denoiser(cfg, self.schedule).to(self.dtype)
        # Built on meta (dtype, channels_last), then given fake CPU tensors of the same layout:
        # Module.to() cannot convert fake parameters in place.
        with torch.device("meta"):
            model = build_denoiser(cfg, self.schedule).to(self.dtype)
        with self.mode:
            for module in model.modules():
                for name, param in module.named_parameters(recurse=False):
                    module._parameters[name] = torch.nn.Parameter(_fake_like(param), param.requires_grad)
                for name, buffer in module.named_buffers(recurse=False):
                    module._buffers[name] = _fake_like(buffer)
        return model

    def _randn(self, *shape: int) -> torch.Tensor:
        with self.mode if self.mode is not None else contextlib.nullcontext():
            return torch.randn(*shape)

    def _autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16)

    def forward_loss(self, k: int, batch: int) -> tuple[torch.Tensor, int]:
        """(loss, autograd-saved bytes) of one micro-batch as the training loop makes it."""
        res, t = self.schedule.stage_resolution(k), self.schedule.sample_timesteps(k, batch)
        x0 = self._randn(batch, 3, res, res)
        y_t = self.schedule.q_sample(x0, t, self._randn(batch, 3, res, res))  # the loop drops the noise too
        with SavedBytes(self.skip) as saved:
            with self._autocast():
                output = self.model(y_t.to(self.dtype), t)
            loss = training_loss(self.schedule, output, x0, None, t, self.prediction, y_t=y_t).mean()
        return loss, saved.total

    def train_step(self, k: int, batch: int) -> StepBytes:
        """One micro-batch: q_sample, forward, loss, backward."""
        with PeakLiveBytes(self.skip) as live:
            loss, saved = self.forward_loss(k, batch)
            loss.backward()
        return StepBytes(saved, live.peak)

    def sample_step(self, k: int, batch: int) -> StepBytes:
        """One denoiser call of the sampler (no autograd graph)."""
        res, t = self.schedule.stage_resolution(k), self.schedule.sample_timesteps(k, batch)
        with torch.no_grad(), PeakLiveBytes(self.skip) as live:
            y_t = self._randn(batch, 3, res, res)
            with self._autocast():
                self.model.predict_x0(y_t.to(self.dtype), t)
        return StepBytes(0, live.peak)


def _fake_like(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor of t's shape, strides and dtype (fake under an active FakeTensorMode)."""
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu")


def _drop_grad(param: torch.Tensor) -> None:
    param.grad = None


__all__ = ["ProbeModel", "StepBytes", "SavedBytes", "PeakLiveBytes", "storage_key", "DTYPES"]
