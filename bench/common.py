"""Shared benchmark helpers: machine description and result files (JSON + Markdown)."""
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import torch

RESULTS = pathlib.Path(__file__).parent / "results"


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "git_commit": _git_commit()}


def _git_commit() -> str | None:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=pathlib.Path(__file__).parent).strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_results(name: str, payload: dict, markdown_rows: list[str]) -> None:
    """Writes bench/results/NAME.json and NAME.md with the machine and the exact command."""
    payload = {"command": " ".join([os.path.relpath(sys.executable), *sys.argv]), "machine": machine(), **payload}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# {name}", "", f"Command: `{payload['command']}`", "",
             "Machine: " + ", ".join(f"{k}={v}" for k, v in payload["machine"].items()), "", *markdown_rows, ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
