"""Progress as log lines when stdout is not a terminal (SLURM logs)."""
import io

from dvdp_hr.metrics.progress import LineProgress


def test_line_progress_prints_rate_and_eta_at_its_cadence():
    now = [0.0]
    out = io.StringIO()
    bar = LineProgress(total=1000, initial=100, every_seconds=60, stream=out, clock=lambda: now[0])
    now[0] = 30.0
    bar.update(300)
    assert out.getvalue() == ""  # not yet a minute
    now[0] = 60.0
    bar.update(300)  # 600 images in 60 s: 10 img/s, 300 left -> 30 s
    assert out.getvalue() == "progress: 700/1,000 images (70.0%), 10.0 img/s, eta 0h00m\n"
    now[0] = 90.0
    bar.update(150)
    bar.close()  # the last partial window is printed at close
    assert out.getvalue().splitlines()[-1] == "progress: 850/1,000 images (85.0%), 5.0 img/s, eta 0h00m"
    bar.close()  # nothing new: no second line
    assert len(out.getvalue().splitlines()) == 2
