"""Build one index.html over a results folder (training curves, heatmaps with predictions, evaluation)."""
# --- configuration (each constant is also a flag) ---
RESULTS_DIR = "results"  # a folder holding train/, lrp_samples/ and/or lrp_eval/ (results/demo for the demo)
TITLE = "ViT-B/16 on CUB-200-2011: AttnLRP with the Gamma rule"  # page title
# ----------------------------------------------------
from pathlib import Path

from vitlrp import cli
from vitlrp.errors import UserError
from vitlrp.fileio import ensure_writable_dir
from vitlrp.gallery import incomplete_runs, write_results_gallery


def main(cfg):
    if not Path(cfg.RESULTS_DIR).is_dir():
        what = "is a file, not a folder" if Path(cfg.RESULTS_DIR).exists() else "does not exist"
        raise UserError(f"RESULTS_DIR {cfg.RESULTS_DIR} {what}; run the pipeline first or pass --results-dir")
    ensure_writable_dir(cfg.RESULTS_DIR, "RESULTS_DIR")  # index.html is written there
    path = write_results_gallery(cfg.RESULTS_DIR, cfg.TITLE)
    for sub in incomplete_runs(cfg.RESULTS_DIR):
        print(f"warning: {Path(cfg.RESULTS_DIR) / sub} holds a run that did not finish (see its RUN_INCOMPLETE.txt); "
              "the page flags it")
    print(f"Gallery: {path}  (open it in a browser; links are relative, it works offline)")
    return 0


if __name__ == "__main__":
    cli.run(main, globals())
