"""The runtime must import without torch or the training package."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CODE = r"""
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'ms_perception_training', 'training'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import ms_perception
mods = [m.name for m in pkgutil.walk_packages(ms_perception.__path__, 'ms_perception.')]
for m in mods:
    if m.startswith('ms_perception.ros'):
        continue  # needs rclpy (a ROS machine), tested separately
    importlib.import_module(m)
assert 'torch' not in sys.modules
print(len(mods))
"""


def test_runtime_imports_without_torch_or_training():
    r = subprocess.run([sys.executable, "-c", CODE], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip()) >= 8
