"""Issue 14's structure target: a newcomer reaches everything one training iteration of the GAFF
teacher runs (sampling, augmentation, batching, forward, losses, backward) by opening at most 8
files of ``training/``. ``bench/iteration_files.py`` profiles a real 3-iteration fit; this test
keeps the count from creeping back up (it was 14 before the heads, necks, box coding and losses
moved beside their users)."""
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))


def test_one_gaff_iteration_runs_at_most_eight_training_files():
    from iteration_files import traced_files
    files = traced_files(str(ROOT / "config" / "experiments" / "gaff_teacher_smoke.yaml"))
    # the loop, the data, the model parts and the objective all appear: the profile is real
    for f in ("fit.py", "data/loader.py", "data/transforms.py", "models/multispectral.py",
              "models/backbones.py", "models/fusion/gaff.py", "objectives.py", "assign.py"):
        assert f in files, (f, files)
    assert len(files) <= 8, files
