"""``psft study`` as a script, run on this repository's configs/ and data/ wherever it is started from:
python scripts/reproduce.py --budget smoke."""

from __future__ import annotations

import sys
from pathlib import Path

from psft_lightning.boundary import error_boundary
from psft_lightning.study.reproduce import main as study_main

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> Path:
    return study_main(["--root", str(ROOT), *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    with error_boundary():  # one paragraph and the psft exit statuses, as `psft study`
        main()
