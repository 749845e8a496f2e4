"""``psft plot`` as a script, so the old command keeps working: python scripts/plot_runs.py RUNS --out DIR."""

from psft_lightning.boundary import error_boundary
from psft_lightning.study.plots import DEFAULT_TAGS, find_runs, main, plot, read_scalars

__all__ = ["DEFAULT_TAGS", "find_runs", "main", "plot", "read_scalars"]

if __name__ == "__main__":
    with error_boundary():
        main()
