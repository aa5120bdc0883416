#!/usr/bin/env python3
"""Train and/or test a model: python tools/run_net.py --cfg CONFIG [KEY VALUE ...].

Without arguments it trains and tests the digits demo (configs/Demo/REV_VIT_DIGITS.yaml).
"""

import os

from revvit.engine.cli import DEMO_CONFIG, main
from revvit.engine.launch import exit_process

if __name__ == "__main__":
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    exit_process(main(default_cfg=os.path.join(repo, DEMO_CONFIG)))
