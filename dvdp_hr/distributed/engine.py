"""The only module of dvdp_hr that imports DeepSpeed: engine setup, steps, ZeRO checkpoints."""
from __future__ import annotations

import contextlib
import logging
import os
from datetime import timedelta
from typing import Iterator

import deepspeed
import torch
from deepspeed.utils import safe_get_full_fp32_param

from dvdp_hr.distributed.fragment import Fragment

# DeepSpeed logs every checkpoint file it writes at INFO; keep the console for our own progress.
logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def init_distributed(timeout_minutes: float = 30.0) -> None:
    """Join the process group described by RANK/WORLD_SIZE/MASTER_* (gloo on CPU, nccl on GPUs).
    A collective that waits longer than `timeout_minutes` fails the job instead of idling every GPU."""
    from dvdp_hr.distributed.env import init_process_group

    init_process_group(timeout_minutes)  # gloo on CPU, nccl with this rank's device bound; DeepSpeed reuses it
    deepspeed.init_distributed(verbose=False, timeout=timedelta(minutes=timeout_minutes))


def _zero12_fragment(name: str, param) -> Fragment | None:
    mapping = getattr(param, "_hp_mapping", None)
    if mapping is None:
        return None  # no element of this parameter lives in this rank's partition
    return Fragment(name, mapping.lp_fragment_address.start, mapping.hp_fragment)


def _zero3_fragment(name: str, param, rank: int) -> Fragment | None:
    local = param._z3_optimizer.get_local_fp32_param(param)
    start = rank * param.ds_tensor.ds_numel  # equal-size partitions, the last one padded
    valid = min(local.numel(), param.ds_numel - start)
    return Fragment(name, start, local.narrow(0, 0, valid)) if valid > 0 else None


class Engine:
    """A thin wrapper so the training loop never touches DeepSpeed APIs directly."""

    def __init__(self, model: torch.nn.Module, ds_config: dict, param_groups: list[dict] | None = None):
        if param_groups is None:
            param_groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        self.ds, _, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups, config=ds_config)
        self.zero_stage = self.ds.zero_optimization_stage()
        self.dtype = torch.bfloat16 if self.ds.bfloat16_enabled() else torch.float32
        self.device = self.ds.device

    @property
    def module(self) -> torch.nn.Module:
        return self.ds.module

    def __call__(self, *args):
        # bf16 weights: autocast casts fp32 intermediates (e.g. the timestep embedding) to match.
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            return self.ds(*args)

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        """Accumulate gradients; the loop scales `loss` by 1/accum itself (stage-dependent)."""
        self.ds.set_gradient_accumulation_boundary(boundary)
        self.ds.backward(loss, scale_wrt_gas=False)

    def step(self, group_lrs: list[float]) -> torch.Tensor:
        """Optimizer step with one learning rate per parameter group (in the order given at
        construction); returns the global grad norm as a device scalar (inf/nan: DeepSpeed skipped
        the step), without reading it on the host."""
        groups = self.ds.optimizer.param_groups
        if len(groups) != len(group_lrs):
            raise RuntimeError(f"{len(group_lrs)} learning rates for {len(groups)} parameter groups")
        for group, lr in zip(groups, group_lrs):
            group["lr"] = lr
        self.ds.step()
        norm = self.ds.get_global_grad_norm()
        if isinstance(norm, torch.Tensor):
            return norm.detach().reshape(())
        # a Python number (inf after an overflow, or None when not computed): a fill kernel, no copy
        return torch.full((), float("nan") if norm is None else float(norm), device=self.device)

    @contextlib.contextmanager
    def gathered(self, params):
        """Full (read-only) parameter values on every rank; a no-op below ZeRO-3."""
        if self.zero_stage == 3:
            with deepspeed.zero.GatheredParameters(list(params), modifier_rank=None):
                yield
        else:
            yield

    def master_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full fp32 master value) of every trained parameter, on this rank's device, one
        parameter at a time (memory bound: the largest parameter). In a bf16 run these are the
        optimizer's fp32 weights, not the module's bf16 rounding. Collective under ZeRO (an
        all-reduce or all-gather per parameter): every rank must consume it to the end."""
        for name, param in self.ds.module.named_parameters():
            if not param.requires_grad:
                continue  # frozen: not in the optimizer, never updated
            value = safe_get_full_fp32_param(param)
            if value is None:
                raise RuntimeError(f"DeepSpeed holds no fp32 master copy of trained parameter {name!r} "
                                   f"(ZeRO stage {self.zero_stage}); is it in an optimizer parameter group?")
            yield name, value

    def local_master_fragments(self) -> list[Fragment]:
        """This rank's fp32 master slices of the trained parameters, in module order; no
        communication. Views stay valid across steps; fetch them again after `load`."""
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        fragments = []
        for name, param in self.ds.module.named_parameters():
            if not param.requires_grad:
                continue
            if self.zero_stage == 3:
                fragment = _zero3_fragment(name, param, rank)
            else:
                fragment = _zero12_fragment(name, param)
            if fragment is not None:
                fragments.append(fragment)
        return fragments

    def full_state_dict(self, keep: bool) -> dict[str, torch.Tensor] | None:
        """The whole model as fp32 CPU tensors: trained parameters from the fp32 masters, frozen
        ones and buffers as held. Collective under ZeRO; only ranks with keep=True build the dict."""
        state = {}
        for name, value in self.master_parameters():
            if keep:
                state[name] = value.detach().to("cpu", torch.float32).clone()
        frozen = [(n, p) for n, p in self.ds.module.named_parameters() if not p.requires_grad]
        with self.gathered([p for _, p in frozen]):
            if keep:
                state.update({n: p.detach().to("cpu", torch.float32).clone() for n, p in frozen})
        if keep:
            state.update({n: b.detach().to("cpu").clone() for n, b in self.ds.module.named_buffers()})
        return state if keep else None

    def save(self, save_dir: str, tag: str) -> None:
        self.ds.save_checkpoint(save_dir, tag=tag, save_latest=False)

    def load(self, save_dir: str, tag: str) -> None:
        path, _ = self.ds.load_checkpoint(save_dir, tag=tag, load_optimizer_states=True,
                                          load_lr_scheduler_states=False, load_module_strict=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {os.path.join(save_dir, tag)}.")
