"""Build one index.html over a results folder (training curves, heatmaps with predictions, evaluation)."""
# --- configuration (each constant is also a flag) ---
RESULTS_DIR = "results"  # a folder holding train/, lrp_samples/ and/or lrp_eval/ (results/demo for the demo)
TITLE = ""  # page title; empty = "<the model train/config.json names> on CUB-200-2011: AttnLRP with the Gamma rule"
# ----------------------------------------------------
from pathlib import Path

from vitlrp import cli
from vitlrp.errors import UserError
from vitlrp.fileio import ensure_writable_dir
from vitlrp.gallery import SECTIONS, incomplete_runs, run_folder_kind, shown, write_results_gallery
from vitlrp.runfolder import FolderLock

PAGE_SCRIPT = "build_gallery.py"  # this script: the folder's page is its file
# the script that writes each subfolder the page shows (a subfolder another script made is named, not shown)
MAKERS = {"train": "train_vit_cub.py", "lrp_samples": "test_vit_forward.py", "lrp_eval": "evaluate_lrp.py",
          "sanity": "sanity_checks.py", "sweep": "sweep_gamma.py", "pairs": "shortcut_pairs.py"}


def check_results_dir(folder):
    """Refuse a folder that is not a results folder: missing, a file, one run's own folder, or holding nothing."""
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UserError(f"RESULTS_DIR {folder} {what}; run the pipeline first or pass --results-dir")
    kind = run_folder_kind(folder, PAGE_SCRIPT)
    if kind:  # its index.html, if any, is that run's own page: never replaced by an overview
        page = folder / "index.html"
        own = f"its own page is {page}" if page.exists() else "it has no page of its own"
        above = folder.parent if folder.name else folder.resolve().parent
        raise UserError(f"RESULTS_DIR {folder} holds {kind}, not a results folder ({own}); pass the folder that holds "
                        f"it and the other runs' folders: --results-dir {above}")
    if not shown(folder):
        raise UserError(f"RESULTS_DIR {folder} holds no results to show (none of {', '.join(s + '/' for s in SECTIONS)}"
                        "); run the pipeline first or pass the folder that holds them")


def main(cfg):
    folder = Path(cfg.RESULTS_DIR)
    check_results_dir(folder)
    ensure_writable_dir(folder, "RESULTS_DIR")  # index.html is written there
    with FolderLock(folder, "RESULTS_DIR") as lock:  # the page is this script's: no run writes its files here
        lock.refuse_other_script(PAGE_SCRIPT)
        lock.record(["index.html"], script=PAGE_SCRIPT)
        path = write_results_gallery(folder, cfg.TITLE, warn=print, makers=MAKERS)
    for sub in incomplete_runs(folder):
        print(f"warning: {folder / sub} holds a run that did not finish (see its RUN_INCOMPLETE.txt); "
              "the page flags it")
    print(f"Gallery: {path}  (shows {', '.join(s + '/' for s in shown(folder))}; open it in a browser; links are "
          "relative, it works offline)")
    return 0


if __name__ == "__main__":
    cli.run(main, globals())
