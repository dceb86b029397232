import os
import sys
from pathlib import Path

import torch
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))  # tests/strategies.py, toy.py, scripts.py

# Two CPU cores in CI: keep property tests bounded and deterministic from run to run.
settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=25, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The tests' tensors are small: one intra-op thread beats two on a 2-core machine (no oversubscription
# with pytest's own process or a second job), and it keeps floating-point reductions reproducible.
torch.set_num_threads(1)
