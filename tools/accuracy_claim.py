#!/usr/bin/env python3
"""The paper's accuracy claim on the shipped demo data: reversible vs its non-reversible twin, same recipe,
several seeds each, mean and spread of the test top-1 (logic in revvit/benchmarks/accuracy.py).

    python tools/accuracy_claim.py                                   # both demo configs, seeds 0 1 2
    python tools/accuracy_claim.py --cfgs configs/Demo/REV_VIT_DIGITS.yaml --seeds 0 1 2 3 4
    python tools/accuracy_claim.py --report output/accuracy_claim/accuracy_claim.json   # the table again
    python tools/accuracy_claim.py --cfgs configs/Demo/REV_MVIT_MOVING_DIGITS.yaml --out-root output/claim_video &
    python tools/accuracy_claim.py --report output/accuracy_claim/*.json output/claim_video/*.json  # both sweeps

Runs go to OUT_ROOT/<config>/<variant>_seed<N> (default output/accuracy_claim, git-ignored); a run that
already tested is read back, not repeated, so rerunning the command continues an interrupted sweep.
The results JSON is rewritten after every run; the markdown table is printed at the end.
"""

import argparse
import json
import os
import sys

from revvit.benchmarks.accuracy import markdown_table, run_claim, summarise
from revvit.utils.checkpoint import atomic_write

DEMO_CFGS = ["configs/Demo/REV_VIT_DIGITS.yaml", "configs/Demo/REV_MVIT_MOVING_DIGITS.yaml"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfgs", nargs="+", default=DEMO_CFGS, help="configs, each trained reversible and as its twin")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="RNG_SEED of the runs")
    p.add_argument("--out-root", default=os.path.join("output", "accuracy_claim"), help="where the runs write")
    p.add_argument("--out", default=None, help="results JSON (default OUT_ROOT/accuracy_claim.json)")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="config overrides for every run")
    p.add_argument("--timeout", type=float, default=None, help="seconds before one run is abandoned")
    p.add_argument("--report", metavar="JSON", nargs="+", default=None,
                   help="print the table of results files (several: their runs together); run nothing")
    return p.parse_args(argv)


def _write_json(path, results):
    """Atomically, so that an interrupted sweep leaves the last complete file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    text = json.dumps({"results": results, "summary": summarise(results)}, indent=1)
    atomic_write(path, lambda f: f.write(text.encode()))


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.report:
        results = []
        for path in args.report:
            with open(path) as f:
                results += json.load(f)["results"]
    else:
        out = args.out or os.path.join(args.out_root, "accuracy_claim.json")
        results = run_claim(args.cfgs, args.seeds, args.out_root, args.opts, args.timeout,
                            on_result=lambda r: _write_json(out, r), log=lambda m: print(m, flush=True))
        print(f"results: {out}")
    print(markdown_table(summarise(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
