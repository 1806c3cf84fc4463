"""Stop signals and the non-finite step guard of the training loop (no processes launched)."""
import os
from types import SimpleNamespace

import pytest

from dvdp_hr.distributed.signals import REQUEUE_EXIT_CODE, STOP_SIGNALS, StopFlag
from dvdp_hr.train.loop import Counters, NonFiniteError, Trainer


def test_stop_signals_set_the_flag_and_the_requeue_code_is_distinct():
    flag = StopFlag().install()
    try:
        assert not flag.requested
        os.kill(os.getpid(), STOP_SIGNALS[1])  # SIGUSR1
        assert flag.requested and flag.signum == STOP_SIGNALS[1]
    finally:
        flag.uninstall()
    assert REQUEUE_EXIT_CODE not in (0, 1, 2)


def test_non_finite_steps_are_skipped_then_stop_with_a_clear_message():
    trainer = SimpleNamespace(counters=Counters(step=7), cfg=SimpleNamespace(train=SimpleNamespace(max_nonfinite=2)))
    for _ in range(2):
        Trainer._guard(trainer, True)
    Trainer._guard(trainer, False)  # a finite step resets the run of failures
    assert trainer.counters.nonfinite_in_a_row == 0 and trainer.counters.skipped_total == 2
    Trainer._guard(trainer, True), Trainer._guard(trainer, True)
    with pytest.raises(NonFiniteError, match="3 optimizer steps in a row.*train.max_nonfinite=2"):
        Trainer._guard(trainer, True)
