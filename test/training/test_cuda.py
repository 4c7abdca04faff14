"""The CUDA subset: what the trainer runs on a GPU, run on a GPU. Skipped where PyTorch sees no
CUDA device (CI machines, this project's CPU runners); run it on a GPU machine with
``python -m pytest test/training/test_cuda.py``. Every tensor of the losses, assignment and box
coding must stay on the GPU: the tests fail on a device mismatch or a NaN."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "config/models/tiny"
EXP = REPO / "config/experiments"
PRESETS = sorted(p.stem for p in TINY.glob("*.yaml"))


def _batch(mcfg, n=2, device="cuda"):
    from ms_perception_training.data.loader import make_batch
    from ms_perception_training.data.sources import DataConfig, make_pool
    pool = make_pool(mcfg, DataConfig(pairs=n, width=256, height=192, seed=3))
    return make_batch(pool, list(range(n)), mcfg, device=device)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_forward_backward_on_cuda(name):
    from ms_perception_training.models.config import load_model_config
    from ms_perception_training.models.build import build_model
    from ms_perception_training.objectives import Objective
    mcfg = load_model_config(TINY / f"{name}.yaml")
    model = build_model(mcfg).cuda().train()
    b = _batch(mcfg)
    out = model(*model.inputs(b.visible, b.thermal))
    obj = Objective(model, mcfg, "iou", 2.0, True, 1.0, 1.0, 1.0)
    parts = {**obj.task_losses(out, b.targets, b.semantic), **obj.module_losses(out, b.targets, b.visible.shape[-2:])}
    loss = sum(parts.values())
    assert loss.device.type == "cuda" and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None or p.grad.device.type == "cuda" for p in model.parameters())


def test_mutual_guidance_and_amp_with_gradscaler_on_cuda():
    from ms_perception_training.models.config import load_model_config
    from ms_perception_training.models.build import build_model
    from ms_perception_training.objectives import Objective
    mcfg = load_model_config(TINY / "gaff_r18_retinanet.yaml")
    model = build_model(mcfg).cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda")
    obj = Objective(model, mcfg, "mutual_guidance", 2.0, True, 1.0, 1.0, 1.0)
    b = _batch(mcfg)
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.float16):
            out = model(*model.inputs(b.visible, b.thermal))
            parts = {**obj.task_losses(out, b.targets, b.semantic), **obj.module_losses(out, b.targets, b.visible.shape[-2:])}
            loss = sum(parts.values())
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        assert torch.isfinite(loss)


@pytest.mark.parametrize("teacher,student", [("gaff_teacher_smoke", "md_student_smoke"),
                                             ("pdf_teacher_smoke", "pdf_distil_smoke"),
                                             ("cfl_maf_smoke", "crossmodal_smoke")])
def test_each_distiller_short_fit_on_cuda(tmp_path, capsys, teacher, student):
    from ms_perception_training.cli import main
    for name, extra in ((teacher, []), (student, ["--teacher-checkpoint", str(tmp_path / teacher / "last.pt")])):
        code = main(["fit", "--config", str(EXP / f"{name}.yaml"), "--out", str(tmp_path / name), "--iterations", "6",
                     "--json", *extra])
        out = capsys.readouterr().out
        assert code == 0
        s = json.loads(out.strip().splitlines()[-1])
        assert s["device"].startswith("cuda") and np.isfinite(s["last_loss"]) and s["images_per_second"] > 0



def test_gpu_speed_cuda_graph_replays_what_eager_computes():
    """bench/gpu_speed.py's cudagraph mode times a replay of the captured forward pass: the replay
    must recompute the eager fp16 outputs (a capture that recorded nothing would time nothing)."""
    import sys
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_speed
    dev = torch.device("cuda")
    with torch.inference_mode():
        net, inputs, _, _ = gpu_speed.prepare("paper_student", (320, 256), dev, torch.float16)
        eager = [x.clone() for x in net(*inputs)]
        replay = gpu_speed.runner(net, inputs, "cudagraph", dev)
        static = replay()
        for x in static:
            x.zero_()
        res = replay()
        torch.cuda.synchronize()
        assert all(torch.allclose(a, b, atol=1e-3) for a, b in zip(res, eager)) and float(res[0].abs().sum()) > 0
    rep = gpu_speed.time_models(["paper_teacher", "paper_student"], (320, 256), iterations=5, warmup=2,
                                modes=("eager", "cudagraph"))
    assert rep["dtype"] == "float16" and "paper_student/paper_teacher cudagraph" in rep["ratios"]
    for m in rep["models"].values():
        assert m["score_max_abs_vs_unfolded_fp32"] < 0.05 and m["cudagraph"]["median_ms"] > 0
