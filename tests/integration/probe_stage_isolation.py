"""Test driver (run under torchrun): per_stage training, step by step; after each optimizer step
the networks of the stages that step did not draw must be bitwise unchanged (no AdamW drift on
stale momentum or weight decay). Usage: probe_stage_isolation.py CONFIG RUN_DIR STEPS key=value ..."""
import sys

import torch

from dvdp_hr.train.config import load_config
from dvdp_hr.train.loop import Trainer


def snapshot(trainer: Trainer, stage: int) -> list[torch.Tensor]:
    params = list(trainer.engine.module.stage_modules(stage).parameters())
    with trainer.engine.gathered(params):
        return [p.detach().float().clone() for p in params]


def main() -> int:
    config, run_dir, steps, overrides = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    trainer = Trainer(load_config(config, overrides), run_dir)
    stages = range(trainer.schedule.num_stages)
    drawn = set()
    for _ in range(steps):
        before = {k: snapshot(trainer, k) for k in stages}
        k, _, _, _ = trainer.train_step()
        trainer.counters.step += 1
        drawn.add(k)
        for other in stages:
            same = all(torch.equal(a, b) for a, b in zip(before[other], snapshot(trainer, other)))
            assert same == (other != k), f"step drew stage {k}; stage {other} {'did not change' if same else 'moved'}"
    assert len(drawn) > 1, f"only stage(s) {drawn} drawn; use more steps"
    print("stage isolation ok, stages drawn:", sorted(drawn))
    return 0


if __name__ == "__main__":
    sys.exit(main())
