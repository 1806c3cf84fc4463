"""Test driver (run under torchrun): train with the partitioned EMA while keeping, beside it, the
previous full-parameter EMA (every master parameter gathered every update), and count the
collectives the partitioned update issues. Writes RUN/probe_ema.json on rank 0.
Usage: probe_ema.py CONFIG RUN_DIR key=value ..."""
import json
import os
import sys

import deepspeed.comm
import torch
import torch.distributed as dist

from dvdp_hr.train.config import load_config
from dvdp_hr.train.loop import Trainer

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor",
               "broadcast", "reduce", "barrier", "all_to_all_single", "send", "recv")


class CollectiveCounter:
    """Counts calls of every torch.distributed and deepspeed.comm collective while active."""

    def __init__(self):
        self.count, self.active = 0, False
        for module in (dist, deepspeed.comm):
            for name in COLLECTIVES:
                if hasattr(module, name):
                    setattr(module, name, self._wrap(getattr(module, name)))

    def _wrap(self, fn):
        def counted(*args, **kwargs):
            self.count += self.active
            return fn(*args, **kwargs)
        return counted


def main() -> int:
    config, run_dir, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    counter = CollectiveCounter()
    trainer = Trainer(load_config(config, overrides), run_dir)
    ema, label = trainer.ema, trainer.ema.labels[0]
    reference = {n: v.clone() for n, v in ema.full_state(label).items()}
    updates, partitioned, gathered = [0], [0], [0]
    partitioned_update = ema.update

    def update(images):
        before = counter.count
        counter.active = True
        partitioned_update(images)
        partitioned[0] += counter.count - before
        updates[0] += 1
        decay = ema.decay(label, images)
        before = counter.count
        for name, value in trainer.engine.master_parameters():  # the previous, collective EMA
            reference[name].lerp_(value.float(), 1.0 - decay)
        gathered[0] += counter.count - before  # the counter's own check: this path does communicate
        counter.active = False

    ema.update = update
    code = trainer.run()
    assembled = ema.full_state(label)
    diff = max(float((assembled[n] - reference[n]).abs().max()) for n in reference)
    scale = max(float(reference[n].abs().max()) for n in reference)
    if trainer.env.rank == 0:
        with open(os.path.join(run_dir, "probe_ema.json"), "w") as fh:
            json.dump({"updates": updates[0], "collectives_in_updates": partitioned[0],
                       "collectives_in_full_gather_updates": gathered[0], "max_abs_diff": diff,
                       "max_abs": scale, "local_numel": sum(t.numel() for t in ema.shadows[label]),
                       "total_numel": sum(v.numel() for v in reference.values())}, fh)
    return code


if __name__ == "__main__":
    sys.exit(main())
