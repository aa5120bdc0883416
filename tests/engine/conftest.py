import os
import sys

# The engine tests share tinyrun.py (tiny data, configs, a run_net runner). It must be importable by
# plain name, also in processes that torch.multiprocessing spawns (they inherit sys.path).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
