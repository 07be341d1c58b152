import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from sim.conftest import sim_factory  # noqa: E402,F401  (the simulated-host fixture; its skip hook covers us too)
