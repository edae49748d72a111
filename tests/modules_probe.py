"""`enet ARGS` run by enet's own main(), then the names of the top-level modules the
process imported written to OUT, one per line (whatever the exit code):

    python modules_probe.py OUT ARGS...

What tests use to check that a command never imported a library (TensorFlow for `enet
invoke`, `enet jobs list`, `enet launch --dry-run`)."""

import sys
from pathlib import Path

if __name__ == "__main__":
    out, args = Path(sys.argv[1]), sys.argv[2:]
    try:
        from enet_cli.cli import main

        main(args)
    finally:
        names = sorted({name.split(".")[0] for name in sys.modules})
        out.write_text("\n".join(names) + "\n")
