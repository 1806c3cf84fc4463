"""ModelConfig: the denoiser's typed configuration, validated once with friendly errors."""

from dataclasses import dataclass

from dvdp_hr.diffusion import PREDICTIONS

from .attention import BACKENDS
from .presets import MODEL_PRESETS

MODES = ("shared", "per_stage")


@dataclass
class ModelConfig:
    # "shared": one UNet for every stage (t and a stage embedding tell it which); "per_stage": one UNet per stage,
    # trainable as separate runs (train.stages) and merged by `dvdp-hr export`
    mode: str = "shared"
    preset: str = "tiny"                    # a MODEL_PRESETS name
    stage_presets: list[str] | None = None  # per_stage only: one preset per stage, finest first
    prediction: str = "x0"                  # "x0" | "eps" | "v" | "v_orthonormal" (dvdp-math.md s6, s11)
    attention: str = "auto"                 # "auto" | "sdpa" | "xformers"
    dropout: float = 0.0
    grad_checkpointing: bool | list[bool] = False  # per UNet block: all stages, or one flag per stage (finest first)
    channels_last: bool = False             # measured slower for GroupNorm UNets on H100
    compile: bool = False                   # torch.compile per block

    def validate(self) -> "ModelConfig":
        def choose(field, value, options):
            if value not in options:
                raise ValueError(f"model.{field}={value!r} is invalid; choose one of "
                                 f"{sorted(options)}")

        choose("mode", self.mode, MODES)
        choose("preset", self.preset, MODEL_PRESETS)
        choose("prediction", self.prediction, PREDICTIONS)
        choose("attention", self.attention, BACKENDS)
        if self.stage_presets is not None:
            if self.mode != "per_stage":
                raise ValueError("model.stage_presets is only used with model.mode='per_stage'; "
                                 "remove it or set mode='per_stage'")
            if isinstance(self.stage_presets, str) or not self.stage_presets:
                raise ValueError("model.stage_presets must be a non-empty list of preset names, "
                                 "one per stage, finest first")
            for name in self.stage_presets:
                choose("stage_presets[...]", name, MODEL_PRESETS)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout={self.dropout} must be in [0, 1)")
        for flag in ("channels_last", "compile"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"model.{flag} must be true or false, got "
                                 f"{getattr(self, flag)!r}")
        self._check_grad_checkpointing()
        return self

    def _check_grad_checkpointing(self) -> None:
        flags = self.grad_checkpointing
        if isinstance(flags, bool):
            return
        if not isinstance(flags, list) or not flags or any(not isinstance(f, bool) for f in flags):
            raise ValueError(f"model.grad_checkpointing must be true/false (all stages) or a list "
                             f"of true/false, one per stage, finest first (e.g. [true, false, false]); "
                             f"got {flags!r}")

    def checkpointed_stages(self, num_stages: int) -> tuple[bool, ...]:
        """One gradient-checkpointing flag per stage, finest first."""
        self._check_grad_checkpointing()
        flags = self.grad_checkpointing
        if isinstance(flags, bool):
            return (flags,) * num_stages
        if len(flags) != num_stages:
            raise ValueError(f"model.grad_checkpointing has {len(flags)} entries but the schedule has "
                             f"{num_stages} stages; give one true/false per stage, finest first, or a "
                             f"single true/false for all stages")
        return tuple(flags)
