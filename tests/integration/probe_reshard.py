"""Test driver (run under torchrun): resume RUN_DIR with reshard=True, record what the engine holds
right after the resume (before any step) against the checkpoint, then train on.
Usage: probe_reshard.py CONFIG RUN_DIR key=value ..."""
import json
import os
import sys

import torch
from safetensors.torch import load_file

from dvdp_hr.distributed import checkpoint as ckpt
from dvdp_hr.train.config import load_config
from dvdp_hr.train.loop import Trainer


def main() -> int:
    config, run_dir, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    tag = ckpt.latest_name(run_dir)
    trainer = Trainer(load_config(config, overrides), run_dir, reshard=True)
    held = trainer.engine.full_state_dict(keep=True)  # fp32 masters, before the first resumed step
    saved = load_file(os.path.join(ckpt.checkpoints_dir(run_dir), tag, ckpt.RAW_WEIGHTS))
    optimizer = trainer.engine.ds.optimizer.optimizer  # the base AdamW under ZeRO
    states = [s for s in optimizer.state.values() if "exp_avg_sq" in s]
    report = {
        "tag": tag, "images": trainer.counters.images, "step": trainer.counters.step,
        "weights_equal": sorted(held) == sorted(saved) and all(torch.equal(held[k], saved[k]) for k in saved),
        "adam_steps": sorted({int(s["step"]) for s in states}),
        "moments_nonzero": bool(states) and all(float(s["exp_avg_sq"].abs().sum()) > 0 for s in states),
    }
    code = trainer.run()
    if trainer.env.rank == 0:
        with open(os.path.join(run_dir, "probe_reshard.json"), "w") as fh:
            json.dump(report, fh)
    return code


if __name__ == "__main__":
    sys.exit(main())
