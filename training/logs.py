"""Training logs on the main process: console (a progress bar with ETA on a terminal, lines
otherwise), ``metrics.jsonl``, and TensorBoard event files when ``tensorboard`` is installed."""
from __future__ import annotations

import math
import sys
from pathlib import Path

from ms_perception.core import jsonio


class Logger:
    """Console + metrics.jsonl + TensorBoard (when installed) on the main process."""

    def __init__(self, out_dir: Path, enabled: bool, log, tensorboard: bool, total: int):
        self.enabled, self.log, self.total = enabled, log, total
        self.tty = enabled and log is print and sys.stdout.isatty()
        self.writer = None
        self.jsonl = None
        if not enabled:
            return
        self.jsonl = open(out_dir / "metrics.jsonl", "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                log("TensorBoard logs off: the 'tensorboard' package is not installed (pip install tensorboard); "
                    "the scalars are in metrics.jsonl")

    def scalars(self, it: int, values: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        flat = _flatten(values)
        self.jsonl.write(jsonio.dumps({"iteration": it, "kind": prefix, **flat}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for k, v in flat.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(f"{prefix}/{k}", v, it)

    def progress(self, it: int, loss: float, lr: float, elapsed: float, done: int) -> None:
        if not self.enabled:
            return
        eta = elapsed / max(1, done) * (self.total - it - 1)
        if self.tty:
            n = int(30 * (it + 1) / self.total)
            sys.stdout.write(f"\r[{'#' * n}{'.' * (30 - n)}] {it + 1}/{self.total} loss {loss:.4f} lr {lr:.2e} "
                             f"ETA {eta:.0f}s ")
            sys.stdout.flush()
            if it + 1 == self.total:
                sys.stdout.write("\n")
        elif it % 20 == 0 or it == self.total - 1:
            self.log(f"it {it:5d}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {elapsed:.0f}s elapsed, ETA {eta:.0f}s")

    def close(self):
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()


def _flatten(d: dict, pre: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{pre}{k}/"))
        else:
            out[f"{pre}{k}"] = v
    return out
