"""Exponential moving averages of the fp32 master weights, each rank averaging only its own partition.

Under ZeRO every rank owns a slice of the optimizer's fp32 master weights (engine
`local_master_fragments`). The EMA keeps one fp32 shadow of exactly that slice per EMA length and
updates it with `torch._foreach_lerp_` after the optimizer step: no collective, no host sync,
1/world_size of the memory. The full averages are assembled (one all-reduce per EMA of disjoint
slices, so the sum is exact) only to save a checkpoint or draw samples.

An EMA's length is a per-step decay (`ema.decays`) or a half-life in training images
(`ema.halflife_images`, EDM2-style): images per step vary between stages, so a half-life of H
images gives decay 0.5 ** (images / H) for a step of `images` images.
"""
from __future__ import annotations

import copy
import os

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file


def ema_filename(label) -> str:
    """ema-<label>.safetensors; a float decay's repr is exact (0.9999999 and 0.99999995 differ)."""
    return f"ema-{float(label)!r}.safetensors" if isinstance(label, (int, float)) else f"ema-{label}.safetensors"


def halflife_label(images) -> str:
    return f"hl{int(images)}"


def _distinct(values, key: str) -> list:
    if not values:
        raise ValueError(f"{key} is empty: give at least one, e.g. ema.decays=[0.9999].")
    duplicates = sorted({v for v in values if list(values).count(v) > 1})
    if duplicates:
        raise ValueError(f"{key} has duplicates {duplicates} (from {list(values)!r}); each EMA needs "
                         f"its own length, remove the repeated entries.")
    return list(values)


def ema_lengths(decays=None, halflife_images=None) -> dict:
    """{label: decay (float) or ('halflife', images)}: half-lives win when given."""
    if halflife_images:
        return {halflife_label(h): ("halflife", float(h)) for h in _distinct(halflife_images, "ema.halflife_images")}
    return {float(d): float(d) for d in _distinct([float(d) for d in decays or []], "ema.decays")}


class EMA:
    def __init__(self, model: torch.nn.Module, decays=None, halflife_images=None):
        """`model` must hold its full initial weights (build the EMA before the engine partitions
        or casts them). Call `attach(engine)` once the engine exists."""
        self.lengths = ema_lengths(decays, halflife_images)
        self.labels = list(self.lengths)
        self._template = copy.deepcopy(model).to("meta")  # structure only, for materialize()
        self._initial = {n: p.detach().to("cpu", torch.float32).clone() for n, p in model.named_parameters()}
        self._frozen = {n: v for n, v in self._initial.items() if not model.get_parameter(n).requires_grad}
        self._buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self._trained = [(n, p.shape) for n, p in model.named_parameters() if p.requires_grad]
        self._engine, self._names, self._starts, self.shadows = None, [], [], {}

    # ---- the per-step path ----
    def attach(self, engine) -> "EMA":
        """Take this rank's slices from the engine; shadows start at the initial fp32 weights."""
        self._engine, self.device = engine, engine.device
        self._bind(engine.local_master_fragments())
        self.shadows = {label: [self._initial[n].flatten()[s:s + v.numel()].to(self.device).clone()
                                for n, s, v in zip(self._names, self._starts, self._views)]
                        for label in self.labels}
        self._initial = None  # the frozen ones stay in self._frozen
        return self

    def _bind(self, fragments) -> None:
        self._names = [f.name for f in fragments]
        self._starts = [f.start for f in fragments]
        self._views = [f.value for f in fragments]

    def refresh(self) -> None:
        """Re-fetch the master views (after the engine loaded a checkpoint into its partitions)."""
        fragments = self._engine.local_master_fragments()
        if [f.name for f in fragments] != self._names or [f.start for f in fragments] != self._starts:
            raise RuntimeError("the engine's partition layout changed since the EMA was attached")
        self._bind(fragments)

    def decay(self, label, images: int) -> float:
        length = self.lengths[label]
        return 0.5 ** (images / length[1]) if isinstance(length, tuple) else length

    @torch.no_grad()
    def update(self, images: int) -> None:
        """shadow = decay * shadow + (1 - decay) * master for every EMA; `images` is the number of
        training images since the last update (what a half-life is counted in). Local only."""
        if not self._views:
            return
        for label, shadow in self.shadows.items():
            torch._foreach_lerp_(shadow, self._views, 1.0 - self.decay(label, images))
        self._live_buffers = dict(self._engine.module.named_buffers())

    # ---- assembling full weights (collective) ----
    def _full_trained(self, label) -> dict[str, torch.Tensor]:
        """Every trained parameter's full EMA value on every rank: one all-reduce of disjoint slices."""
        sizes = [shape.numel() for _, shape in self._trained]
        offsets = dict(zip((n for n, _ in self._trained), torch.tensor([0] + sizes[:-1]).cumsum(0).tolist()))
        flat = torch.zeros(sum(sizes), dtype=torch.float32, device=self.device)
        for name, start, value in zip(self._names, self._starts, self.shadows[label]):
            flat.narrow(0, offsets[name] + start, value.numel()).copy_(value)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flat)
        return {n: flat.narrow(0, offsets[n], shape.numel()).view(shape) for n, shape in self._trained}

    def _buffers_now(self) -> dict[str, torch.Tensor]:
        live = getattr(self, "_live_buffers", None)
        return {n: (live[n] if live else b).detach() for n, b in self._buffers.items()}

    def full_state(self, label) -> dict[str, torch.Tensor]:
        """The whole EMA model's state (device tensors). Collective."""
        state = self._full_trained(label)
        state.update({n: v.to(self.device) for n, v in self._frozen.items()})
        state.update({n: b.to(self.device) for n, b in self._buffers_now().items()})
        return state

    def materialize(self, label=None) -> torch.nn.Module:
        """A full fp32 eval-mode model of one EMA (default: the first) on the training device. Collective."""
        model = copy.deepcopy(self._template).to_empty(device=self.device)
        model.load_state_dict(self.full_state(self.labels[0] if label is None else label), strict=True)
        return model.float().eval().requires_grad_(False)

    def state_dicts(self, keep: bool) -> dict[str, dict[str, torch.Tensor]] | None:
        """{file name: full fp32 CPU state} of every EMA, a snapshot safe to write from another
        thread. Collective (every rank calls it); only ranks with keep=True get the dicts."""
        out = {}
        for label in self.labels:
            state = self.full_state(label)
            if keep:
                out[ema_filename(label)] = {k: v.to("cpu", torch.float32, copy=True).contiguous()
                                            for k, v in state.items()}
        return out if keep else None

    def save(self, ckpt_dir: str) -> None:
        """Collective; every rank calls it, rank 0 writes."""
        keep = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
        for name, state in (self.state_dicts(keep) or {}).items():
            save_file(state, os.path.join(ckpt_dir, name))

    def load(self, ckpt_dir: str) -> None:
        """Each rank reads the full files and keeps its own slices (call after the engine loaded)."""
        self.refresh()
        for label in self.labels:
            path = os.path.join(ckpt_dir, ema_filename(label))
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} missing: the checkpoint has no EMA {label!r} "
                                        f"(ema.decays / ema.halflife_images must match the run being resumed).")
            state = load_file(path)
            self.shadows[label] = [state[n].flatten()[s:s + v.numel()].to(self.device).clone()
                                   for n, s, v in zip(self._names, self._starts, self._views)]
            self._buffers = {n: state[n] for n in self._buffers}
