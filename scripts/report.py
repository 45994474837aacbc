"""Write the results tables of finished runs as one Markdown page (docs/results.md), from their CSV and JSON files.

Each table names the command that made its numbers, so the page is made again, not edited: after `make demo`,
`make sweep`, `make shortcut` or `make bench`, run `make report`. A run that is missing or unfinished is named, not
shown.
"""
# --- configuration (each constant is also a flag) ---
RESULTS_DIR = "results/demo"  # the folder holding lrp_eval/, sanity/ and sweep/ (results/demo after make demo)
SHORTCUT_DIR = "results/shortcut"  # the folder holding lrp_eval/ of the shortcut benchmark (make shortcut)
BENCHMARK_FILES = ["results/benchmark/benchmark.json"]  # written by scripts/benchmark.py (make bench), one table each
OUTPUT_FILE = "docs/results.md"  # the page
TITLE = "Results on the synthetic mini-CUB"  # the page's heading
# ----------------------------------------------------
import datetime
from pathlib import Path

from vitlrp import cli
from vitlrp import report as R
from vitlrp.errors import UserError
from vitlrp.fileio import write_text


def main(cfg):
    if not cfg.OUTPUT_FILE.endswith(".md"):
        raise UserError(f"OUTPUT_FILE must be a Markdown file (.md), got {cfg.OUTPUT_FILE!r}")
    results, shortcut = Path(cfg.RESULTS_DIR), Path(cfg.SHORTCUT_DIR)
    sections = [
        R.evaluation_section(results / "lrp_eval"),
        R.sanity_section(results / "sanity"),
        R.sweep_section(results / "sweep"),
        R.shortcut_section(shortcut / "lrp_eval"),
        *(R.benchmark_section(Path(f)) for f in cfg.BENCHMARK_FILES),
    ]
    found = [s for s in sections if s.table]
    if not found:
        files = ", ".join(cfg.BENCHMARK_FILES) or "BENCHMARK_FILES"
        raise UserError(f"no finished run under {cfg.RESULTS_DIR}, {cfg.SHORTCUT_DIR} or in {files}: run `make demo` "
                        "(or the scripts) first")
    head = [f"# {cfg.TITLE}", "",
            f"Written by `{cli.config_dict(cfg)['command']}` on {datetime.date.today().isoformat()} from the files "
            "each section names. Do not edit: run the commands again, then `make report`.", ""]
    write_text(Path(cfg.OUTPUT_FILE), "\n".join(head + [line for s in sections for line in s.lines()]) + "\n")
    for s in sections:
        print(f"{s.title}: " + ("written" if s.table else s.missing))
    print(f"Wrote {cfg.OUTPUT_FILE}")
    return 0


if __name__ == "__main__":
    cli.run(main, globals())
