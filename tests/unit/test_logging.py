"""Run logs survive a kill mid-write: resuming drops the redone steps and any cut-off line."""
import json

from dvdp_hr.metrics.logging import read_jsonl, truncate_jsonl


def test_truncate_keeps_steps_up_to_the_checkpoint_and_drops_a_cut_line(tmp_path):
    path = tmp_path / "loss.jsonl"
    lines = [json.dumps({"step": s, "loss": 0.1 * s}) + "\n" for s in range(1, 6)]
    path.write_text("".join(lines) + '{"step": 6, "lo')  # SIGKILL in the middle of a write
    truncate_jsonl(str(path), last_step=3)
    assert [r["step"] for r in read_jsonl(str(path))] == [1, 2, 3]


def test_truncate_cuts_in_place_for_any_block_size_and_keeps_earlier_bytes(tmp_path):
    """The cut is found from the tail (block by block) and the file truncated, never rewritten:
    the kept prefix is byte-identical, whatever the block size and whatever partial line trails."""
    import random

    rng = random.Random(0)
    for trial in range(200):
        count = rng.randint(0, 30)
        records = [json.dumps({"step": i, "pad": "x" * rng.randint(0, 20)}) + "\n" for i in range(1, count + 1)]
        path = tmp_path / f"{trial}.jsonl"
        path.write_text("".join(records) + rng.choice(["", '{"step": 9', "garbage"]))
        inode = path.stat().st_ino
        last = rng.randint(0, count + 2)
        truncate_jsonl(str(path), last, block=rng.choice([1, 5, 64, 1 << 16]))
        assert path.read_text() == "".join(records[:min(last, count)]), trial
        assert path.stat().st_ino == inode  # the same file, truncated in place
