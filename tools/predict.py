#!/usr/bin/env python3
"""Top-k classes of image / video files: python tools/predict.py --cfg CONFIG --checkpoint FILE INPUT [INPUT ...].

Options: --topk K, --output FILE.csv|FILE.json, and config overrides after --opts KEY VALUE ...
"""

import sys

from revvit.engine.predict import main

if __name__ == "__main__":
    sys.exit(main())
