"""Test driver (run under torchrun): train like `dvdp-hr train`, then record what the live
process holds, for comparison with `dvdp-hr export`: the EMA model's weights and its outputs on
fixed probe inputs, and the gathered raw weights. Usage: probe_train.py CONFIG RUN_DIR key=value ..."""
import os
import sys

import torch
from safetensors.torch import save_file

from dvdp_hr.train.config import load_config
from dvdp_hr.train.loop import Trainer


def probe_inputs(schedule):
    """One (y_t, t) batch per stage, from a fixed generator."""
    g = torch.Generator().manual_seed(1234)
    batches = []
    for k in range(schedule.num_stages):
        res = schedule.stage_resolution(k)
        lo, hi = schedule.stage_bounds(k)
        batches.append((torch.randn(2, 3, res, res, generator=g), torch.tensor([lo + 1, hi])))
    return batches


@torch.no_grad()
def ema_outputs(model, schedule) -> dict:
    return {f"stage{k}": model(y, t).float().contiguous() for k, (y, t) in enumerate(probe_inputs(schedule))}


def main() -> int:
    config, run_dir, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    trainer = Trainer(load_config(config, overrides), run_dir)
    code = trainer.run()
    params = list(trainer.engine.module.parameters())
    with trainer.engine.gathered(params):
        raw = {n: p.detach().float().clone().contiguous() for n, p in trainer.engine.module.named_parameters()}
    model = trainer.ema.materialize()  # collective: every rank takes part
    if trainer.env.rank == 0:
        save_file(ema_outputs(model, trainer.schedule), os.path.join(run_dir, "probe_ema_outputs.safetensors"))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  os.path.join(run_dir, "probe_ema_weights.safetensors"))
        save_file(raw, os.path.join(run_dir, "probe_raw_weights.safetensors"))
    return code


if __name__ == "__main__":
    sys.exit(main())
