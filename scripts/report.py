"""Write the results tables of finished runs as one Markdown page (docs/results.md), from their CSV and JSON files.

Each table names the command that made its numbers, so the page is made again, not edited: after `make demo`,
`make sweep`, `make shortcut` or `make bench`, run `make report`. A run that is missing or unfinished stops the
report with a line naming it and the make target that makes it (unless PARTIAL: then it is named on the page, not
shown); a stale run (another checkpoint or dataset, or a checkpoint changed since) is marked on the page.
"""
# --- configuration (each constant is also a flag) ---
RESULTS_DIR = "results/demo"  # the folder holding lrp_eval/, sanity/ and sweep/ (results/demo after make demo)
SHORTCUT_DIR = "results/shortcut"  # the folder holding lrp_eval/ of the shortcut benchmark (make shortcut)
BENCHMARK_FILES = ["results/benchmark/benchmark.json"]  # written by scripts/benchmark.py (make bench), one table each
OUTPUT_FILE = "docs/results.md"  # the page
TITLE = "Results on the synthetic mini-CUB"  # the page's heading
PARTIAL = False  # true: write the page even if runs are missing (each missing one is named on it)
# ----------------------------------------------------
import datetime
from pathlib import Path

from vitlrp import cli
from vitlrp import report as R
from vitlrp.errors import UserError
from vitlrp.fileio import write_text

# the make target that makes each benchmark file (by its folder), for the line naming a missing run
BENCHMARK_TARGETS = {"benchmark": "make bench", "benchmark_vit_b16": "make bench-vit-b16"}


def sections_with_targets(cfg):
    """``[(Section, make target)]`` of the page in order; the console lines of stale runs."""
    results, shortcut = Path(cfg.RESULTS_DIR), Path(cfg.SHORTCUT_DIR)
    demo = {"lrp_eval": R.guarded(R.evaluation_section, results / "lrp_eval", "evaluate_lrp.py"),
            "sanity": R.guarded(R.sanity_section, results / "sanity", "sanity_checks.py"),
            "sweep": R.guarded(R.sweep_section, results / "sweep", "sweep_gamma.py")}
    short = {"lrp_eval": R.guarded(R.shortcut_section, shortcut / "lrp_eval", "evaluate_lrp.py")}
    stale = R.mark_stale(demo, results) + R.mark_stale(short, shortcut)
    pairs = [(demo["lrp_eval"], "make demo"), (demo["sanity"], "make demo"), (demo["sweep"], "make sweep"),
             (short["lrp_eval"], "make shortcut")]
    for f in cfg.BENCHMARK_FILES:
        folder = Path(f).parent
        target = BENCHMARK_TARGETS.get(folder.name, f"python scripts/benchmark.py --output-dir {folder}")
        pairs.append((R.guarded(R.benchmark_section, Path(f), "benchmark.py", f"Speed: {f}"), target))
    return pairs, stale


def main(cfg):
    if not cfg.OUTPUT_FILE.endswith(".md"):
        raise UserError(f"OUTPUT_FILE must be a Markdown file (.md), got {cfg.OUTPUT_FILE!r}")
    pairs, stale = sections_with_targets(cfg)
    sections = [s for s, _ in pairs]
    if not any(s.table for s in sections):
        files = ", ".join(cfg.BENCHMARK_FILES) or "BENCHMARK_FILES"
        raise UserError(f"no finished run under {cfg.RESULTS_DIR}, {cfg.SHORTCUT_DIR} or in {files}: run `make demo` "
                        "(or the scripts) first")
    missing = [f"{s.title} ({s.missing}: {target})" for s, target in pairs if not s.table]
    if missing and not cfg.PARTIAL:
        raise UserError(f"runs missing, so {cfg.OUTPUT_FILE} would lose their sections: {'; '.join(missing)}; run "
                        "them, or pass --partial true to write the page without them")
    for line in stale:
        print(line)
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
