#!/usr/bin/env python3
"""Overlay the training curves of runs: python tools/plot_stats.py RUN_DIR [RUN_DIR ...] [--output FILE.png].

Each RUN_DIR is a run's OUTPUT_DIR (its json_stats.log is read); the picture shows train loss,
learning rate, and train (solid) / val (dashed) top-1 error per epoch, one colour per run.
"""

import argparse
import os
import sys

from revvit.utils.curves import plot_runs

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="plot_stats.py", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="OUTPUT_DIR of each run")
    parser.add_argument("--output", default=os.path.join("output", "curves.png"),
                        help="picture to write (default: output/curves.png, git-ignored like every run's OUTPUT_DIR)")
    parser.add_argument("--labels", nargs="+", default=None, help="legend label per run (default: folder names)")
    args = parser.parse_args()
    if args.labels is not None and len(args.labels) != len(args.runs):
        parser.error(f"--labels needs one label per run ({len(args.runs)}), got {len(args.labels)}")
    if os.path.isdir(args.output):
        parser.error(f"--output {args.output} is a folder; give the picture's file name, e.g. {os.path.join(args.output, 'curves.png')}")
    folder = os.path.dirname(args.output) or "."
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:  # a regular file where a folder of the path should be, or no permission
        blocker = folder
        while not os.path.exists(blocker) and os.path.dirname(blocker) not in ("", blocker):
            blocker = os.path.dirname(blocker)
        why = f"{blocker} is a file, not a folder" if os.path.isfile(blocker) else e.strerror
        parser.error(f"--output {args.output}: cannot create the folder {folder} ({why}); write the picture elsewhere")
    if not plot_runs(args.runs, args.output, args.labels):
        print(f"plot_stats.py: error: no epoch stats in {', '.join(d + '/json_stats.log' for d in args.runs)}", file=sys.stderr)
        sys.exit(1)
    print(f"Wrote {args.output}")
