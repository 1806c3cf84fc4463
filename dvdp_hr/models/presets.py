"""Named UNet sizes. Channels are a multiplier list (as in ADM) so one network runs at any
input resolution divisible by 2**(levels - 1); attention sits at fixed levels."""

from dataclasses import dataclass


@dataclass(frozen=True)
class UNetPreset:
    """Architecture of one UNet.

    attn_resolutions are feature-map sizes *at reference_resolution*; they fix which levels hold
    self-attention (ADM's `attention_ds` convention). The same weights then serve every stage
    resolution: at a half-size input those levels simply see half-size feature maps.
    """

    base_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    reference_resolution: int
    head_channels: int = 64
    norm_groups: int = 32
    in_channels: int = 3

    @property
    def num_levels(self) -> int:
        return len(self.channel_mult)

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def attn_levels(self) -> tuple[int, ...]:
        """Indices of the levels (0 = full resolution) that hold self-attention."""
        sizes = [self.reference_resolution // 2**i for i in range(self.num_levels)]
        return tuple(i for i, s in enumerate(sizes) if s in self.attn_resolutions)

    def validate(self) -> None:
        channels = self.level_channels + (self.base_channels,)
        bad_groups = [c for c in channels if c % self.norm_groups]
        if bad_groups:
            raise ValueError(f"norm_groups={self.norm_groups} must divide every level's channels "
                             f"{self.level_channels}; choose a divisor of {min(channels)}")
        bad_heads = [self.level_channels[i] for i in self.attn_levels
                     if self.level_channels[i] % self.head_channels]
        if bad_heads:
            raise ValueError(f"head_channels={self.head_channels} must divide the channels of "
                             f"attention levels {bad_heads}")
        sizes = [self.reference_resolution // 2**i for i in range(self.num_levels)]
        missing = sorted(set(self.attn_resolutions) - set(sizes))
        if missing:
            raise ValueError(f"attn_resolutions {missing} are not feature sizes {sizes} of "
                             f"reference_resolution={self.reference_resolution}")

    @property
    def min_resolution_multiple(self) -> int:
        return 2 ** (self.num_levels - 1)


MODEL_PRESETS: dict[str, UNetPreset] = {
    # CPU tests and the demo: ~0.2M parameters, trains in seconds at 16-64 px.
    "tiny": UNetPreset(base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                       attn_resolutions=(8,), reference_resolution=32, head_channels=16,
                       norm_groups=8),
    # CPU benchmark at 64x64 (attention at 16 and 8, as ADM does at low resolution).
    "small": UNetPreset(base_channels=64, channel_mult=(1, 2, 2, 4), num_res_blocks=2,
                        attn_resolutions=(16, 8), reference_resolution=64, head_channels=64),
    # FFHQ-1024 (ADM-like, ~120M parameters): 1024 -> 32 feature maps at stage 0, attention on
    # the two deepest levels (64x64 and 32x32 tokens at 1024 px, 4x4 and 2x2 at the 64 px root).
    "ffhq1024": UNetPreset(base_channels=128, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                           attn_resolutions=(64, 32), reference_resolution=1024, head_channels=64),
    # A stage-specific root network for per_stage mode (ADM's 64x64 layout).
    "root64": UNetPreset(base_channels=128, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
                         attn_resolutions=(32, 16, 8), reference_resolution=64, head_channels=64),
}


def get_preset(name: str) -> UNetPreset:
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(MODEL_PRESETS)}")
    return MODEL_PRESETS[name]
