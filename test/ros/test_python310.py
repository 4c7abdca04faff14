"""The runtime and the launch file stay importable on Python 3.10 (ROS 2 Humble's Python; rclpy 3.3),
which the suite cannot run: vermin checks the syntax and standard-library use statically."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_runtime_needs_at_most_python_310():
    vermin = shutil.which("vermin") or str(Path(sys.executable).parent / "vermin")
    proc = subprocess.run([vermin, "--target=3.10-", "--no-tips", "--violations", "--eval-annotations",
                           "ms_perception", "launch"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = re.search(r"Minimum required versions: (?:[\d.~]+, )?3\.(\d+)", proc.stdout)
    assert m and int(m.group(1)) <= 10, proc.stdout[-2000:]
