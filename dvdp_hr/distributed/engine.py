"""The only module of dvdp_hr that imports DeepSpeed: engine setup, steps, ZeRO checkpoints."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
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

    def set_master_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Overwrite every trained parameter's fp32 master and module copy with `state` (full
        values, e.g. `consolidated_fp32`); optimizer moments are left as they are. Collective under ZeRO-3."""
        from deepspeed.utils import safe_set_full_fp32_param

        for name, param in self.ds.module.named_parameters():
            if not param.requires_grad:
                continue
            if name not in state:
                raise RuntimeError(f"the consolidated checkpoint has no weights for trained parameter {name!r}")
            value = state[name].to(self.device, torch.float32)
            safe_set_full_fp32_param(param, value)
            if self.zero_stage == 3:
                with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                    param.data.copy_(value.to(param.dtype))
        if self.zero_stage in (1, 2):
            self.ds.optimizer.update_lp_params()  # module (bit16 or fp32 working) copies from the masters

    def save(self, save_dir: str, tag: str) -> None:
        self.ds.save_checkpoint(save_dir, tag=tag, save_latest=False)

    def load(self, save_dir: str, tag: str) -> None:
        path, _ = self.ds.load_checkpoint(save_dir, tag=tag, load_optimizer_states=True,
                                          load_lr_scheduler_states=False, load_module_strict=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {os.path.join(save_dir, tag)}.")

    def load_universal(self, universal_root: str, tag: str) -> None:
        """Weights and optimizer state from a universal checkpoint (`to_universal`'s output,
        universal_root/tag) on this engine's data-parallel size, whatever the writer's was.
        DeepSpeed reads `checkpoint.load_universal` only while loading: it is set for this call alone."""
        config = self.ds._config
        before = config.load_universal_checkpoint
        config.load_universal_checkpoint = True
        try:
            path, _ = self.ds.load_checkpoint(universal_root, tag=tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=False, load_module_strict=True)
        finally:
            config.load_universal_checkpoint = before
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load universal checkpoint {os.path.join(universal_root, tag)}.")


def to_universal(save_dir: str, tag: str, out_dir: str) -> None:
    """Convert the ZeRO checkpoint save_dir/tag into a universal one in out_dir (DeepSpeed's
    ds_to_universal, in this process: no worker pools). Reads the checkpoint, never writes to it."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    shutil.rmtree(out_dir, ignore_errors=True)  # a conversion cut short earlier
    args = argparse.Namespace(input_folder=os.path.join(save_dir, tag), output_folder=out_dir,
                              num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                              strict=True, inject_missing_state=True)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # it prints every step
        ds_to_universal(args)


def consolidated_fp32(save_dir: str, tag: str) -> dict[str, torch.Tensor]:
    """Full fp32 weights of the trained parameters of ZeRO checkpoint save_dir/tag (any stage)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(save_dir, tag=tag)
