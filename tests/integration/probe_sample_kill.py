"""`dvdp-hr sample` whose process dies (os._exit, like kill -9) after PROBE_WRITES PNG writes: the
last batch is left half written, with temporaries of the writer threads possibly in the folder."""
import os
import sys

from dvdp_hr.sampling import outdir

LIMIT = int(os.environ["PROBE_WRITES"])
_write, _count = outdir.write_png, [0]


def write_then_die(folder, seed, pixels):
    if _count[0] >= LIMIT:
        os._exit(137)
    _count[0] += 1
    return _write(folder, seed, pixels)


outdir.write_png = write_then_die

if __name__ == "__main__":
    from dvdp_hr.cli import main

    sys.exit(main(sys.argv[1:]))
