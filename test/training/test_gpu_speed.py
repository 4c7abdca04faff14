"""bench/gpu_speed.py (issue 16's GPU goal: teacher and student in fp16 with CUDA graphs or
torch.compile). The GPU figure needs a GPU; here the script's CPU path is run for real (fp32,
eager): the timed model is the folded one and must compute what the unfolded model computes, the
ratios are the ratios of the printed medians, and the GPU-only modes refuse with one line. The
CUDA graph replay itself is checked in test_cuda.py (run on a GPU machine)."""
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))


def test_cpu_run_times_the_folded_models_and_reports_ratios_of_medians(tmp_path, capsys):
    import gpu_speed
    out = tmp_path / "r.json"
    assert gpu_speed.main(["--size", "160x128", "--iterations", "3", "--warmup", "1", "--modes", "eager",
                           "--roles", "paper_teacher,paper_student", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["device"].startswith("cpu") and rep["dtype"] == "float32"
    m = rep["models"]
    # the paper's parameter counts (23.77 M / 12.45 M in the thesis; ours within 2 %)
    assert abs(m["paper_teacher"]["params_m"] - 23.77) / 23.77 < 0.02
    assert abs(m["paper_student"]["params_m"] - 12.45) / 12.45 < 0.02
    for r in m.values():   # BatchNorm and thermal-repeat folding leave the detector's scores unchanged
        assert r["score_max_abs_vs_unfolded_fp32"] < 1e-4
        assert 0 < r["eager"]["median_ms"] <= r["eager"]["p90_ms"]
    ratio = rep["ratios"]["paper_student/paper_teacher eager"]
    assert ratio == round(m["paper_student"]["eager"]["median_ms"] / m["paper_teacher"]["eager"]["median_ms"], 4)
    assert "paper_student/paper_teacher eager" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_modes_refuse_without_cuda(capsys):
    import gpu_speed
    assert gpu_speed.main(["--size", "160x128", "--iterations", "1", "--modes", "eager,cudagraph",
                           "--roles", "student"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cudagraph needs a CUDA device" in err[0]


def test_bad_arguments_get_one_line(capsys):
    import gpu_speed
    assert gpu_speed.main(["--size", "640by512"]) == 2
    assert gpu_speed.main(["--roles", "yolo", "--iterations", "1", "--modes", "eager"]) == 2
    assert gpu_speed.main(["--size", "161x128", "--roles", "paper_student", "--iterations", "1",
                           "--modes", "eager"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "WIDTHxHEIGHT" in err[0] and "unknown role" in err[1] and "161x128" in err[2]
