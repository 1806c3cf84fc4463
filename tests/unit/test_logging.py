"""Run logs survive a kill mid-write: resuming drops the redone steps and any cut-off line."""
import json

from dvdp_hr.metrics.logging import read_jsonl, truncate_jsonl


def test_truncate_keeps_steps_up_to_the_checkpoint_and_drops_a_cut_line(tmp_path):
    path = tmp_path / "loss.jsonl"
    lines = [json.dumps({"step": s, "loss": 0.1 * s}) + "\n" for s in range(1, 6)]
    path.write_text("".join(lines) + '{"step": 6, "lo')  # SIGKILL in the middle of a write
    truncate_jsonl(str(path), last_step=3)
    assert [r["step"] for r in read_jsonl(str(path))] == [1, 2, 3]
