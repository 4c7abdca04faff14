"""Losses and the IoU assigner on hand-checkable inputs; the first trainer's smoke run."""
import json
import math

import pytest
import torch
from ms_perception_training.assign import IoUAssigner
from ms_perception_training.config import ConfigError
from ms_perception_training.fit import FitConfig, lr_at
from ms_perception_training.objectives import balanced_l1_loss, dice_loss, sigmoid_focal_loss


def test_focal_loss_by_hand():
    # p = σ(0) = 0.5, target 1: α (1-p)^γ (-log p) = 0.25 * 0.25 * ln 2
    assert sigmoid_focal_loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(0.0625 * math.log(2))
    # target 0 uses 1 - α = 0.75
    assert sigmoid_focal_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(0.1875 * math.log(2))
    # γ = 0, α = 0.5 -> half the BCE
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([1.3]), torch.tensor([1.0]))
    assert sigmoid_focal_loss(torch.tensor([1.3]), torch.tensor([1.0]), 0.5, 0.0).item() == pytest.approx(0.5 * bce.item())


def test_balanced_l1_by_hand_and_continuous():
    b = math.exp(1.5 / 0.5) - 1
    x = 0.3
    expect = 0.5 / b * (b * x + 1) * math.log(b * x + 1) - 0.5 * x
    assert balanced_l1_loss(torch.tensor([x]), torch.tensor([0.0])).item() == pytest.approx(expect, rel=1e-5)
    lo = balanced_l1_loss(torch.tensor([1 - 1e-4]), torch.tensor([0.0])).item()
    hi = balanced_l1_loss(torch.tensor([1 + 1e-4]), torch.tensor([0.0])).item()
    assert abs(hi - lo) < 1e-3  # b chosen so the two pieces meet at β = 1
    assert balanced_l1_loss(torch.tensor([2.0]), torch.tensor([0.0])).item() == pytest.approx(1.5 * 2 + 1.5 / b - 0.5)


def test_dice_loss():
    g = torch.zeros(1, 1, 2, 2)
    g[0, 0, 0] = 1
    assert dice_loss(g, g, eps=0).item() == pytest.approx(0.0)
    assert dice_loss(1 - g, g, eps=0).item() == pytest.approx(1.0)
    assert dice_loss(torch.full_like(g, 0.5), g, eps=0).item() == pytest.approx(1 - 2 * 1 / (2 + 2))


def test_iou_assigner_cases():
    anchors = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 12], [20, 20, 30, 30], [40, 40, 50, 50.0]])
    gt = torch.tensor([[0, 0, 10, 11], [22, 22, 31, 31.0]])
    r = IoUAssigner().assign(anchors, gt)
    # anchor 0 IoU 10/11 and anchor 1 IoU 11/12 with gt 0 -> positive; anchor 2 IoU 64/(100+81-64)=0.547 -> positive
    assert r.labels.tolist() == [1, 1, 1, 0] and r.gt_index.tolist() == [0, 0, 1, -1]
    assert r.num_pos.tolist() == [2, 1] and r.num_ignored.tolist() == [0, 0]
    # a small object below 0.4 IoU everywhere still gets its best anchor
    r2 = IoUAssigner().assign(anchors, torch.tensor([[41, 41, 44, 44.0]]))
    assert r2.labels.tolist() == [0, 0, 0, 1]
    # ignore band 0.4 <= IoU < 0.5 (the best anchor of another object excepted)
    r3 = IoUAssigner().assign(anchors[:1], torch.tensor([[0, 0, 10, 10.0], [0, 0, 10, 22.0]]))
    assert r3.labels.tolist() == [1]
    r4 = IoUAssigner().assign(torch.tensor([[0, 0, 10, 10.0], [0, 0, 10, 21.0]]), torch.tensor([[0, 0, 10, 10.0]]))
    assert r4.labels.tolist() == [1, -1]  # IoU 100/210 = 0.476: between 0.4 and 0.5 -> ignored
    empty = IoUAssigner().assign(anchors, torch.zeros(0, 4))
    assert empty.labels.tolist() == [0, 0, 0, 0] and empty.gt_index.tolist() == [-1] * 4


def test_warmup_then_cosine():
    cfg = FitConfig(iterations=100, warmup_iterations=10, lr=0.01)
    assert lr_at(0, cfg) == pytest.approx(1e-6)
    assert lr_at(10, cfg) == pytest.approx(0.01)
    assert lr_at(55, cfg) == pytest.approx(0.005)
    assert lr_at(100, cfg) == pytest.approx(0.0, abs=1e-12)


def test_step_schedule_by_hand():
    """The Table 3.2 baseline schedule: the full rate from iteration 0 (no warmup), x0.1 from 2/3
    and again from 8/9 of the run."""
    cfg = FitConfig(iterations=90, warmup_iterations=10, lr=0.01, lr_schedule="step")
    assert [lr_at(i, cfg) for i in (0, 59, 60, 79, 80, 89)] == pytest.approx([0.01, 0.01, 0.001, 0.001, 1e-4, 1e-4])
    with pytest.raises(ConfigError, match="lr_schedule"):
        FitConfig(lr_schedule="poly")


def test_smoke_fit_loss_falls(tmp_path, capsys):
    from pathlib import Path

    from ms_perception_training.cli import main
    cfg = Path(__file__).resolve().parents[2] / "config/experiments/synthetic_smoke.yaml"
    assert main(["fit", "--config", str(cfg), "--out", str(tmp_path / "run"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["iterations"] == 60 and s["last_loss"] < 0.7 * s["first_loss"]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["iteration"] == 60


def test_exact_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    from pathlib import Path

    from ms_perception_training.cli import main
    from ms_perception_training.fit import fit, load_fit_config
    cfg, mcfg = load_fit_config(Path(__file__).resolve().parents[2] / "config/experiments/synthetic_smoke.yaml")
    cfg.iterations, cfg.data.pairs, cfg.threads = 8, 12, 1
    cfg.eval.pairs, cfg.eval.every = 3, 2     # the learning curve: held-out evaluations at 2, 4, 6, 8
    full = fit(cfg, mcfg, tmp_path / "full", log=lambda *a: None)
    part = fit(cfg, mcfg, tmp_path / "part", log=lambda *a: None, stop_after=3)   # "interrupted" at 3
    assert part["iterations"] == 3
    assert torch.load(tmp_path / "part" / "last.pt", weights_only=True)["iteration"] == 3
    resumed = fit(cfg, mcfg, tmp_path / "part", log=lambda *a: None, resume=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k            # bit-identical weights
    assert json.loads((tmp_path / "full" / "history.json").read_text()) == \
        json.loads((tmp_path / "part" / "history.json").read_text())
    assert resumed["last_loss"] == full["last_loss"]
    # the curve survives the interruption: 2 from the first part, 4, 6, 8 from the resumed one
    assert [r["iteration"] for r in resumed["curve"]] == [2, 4, 6, 8]
    assert resumed["curve"] == full["curve"]
    # a different schedule cannot resume silently; nor can a missing checkpoint
    cfg.iterations = 9
    with pytest.raises(RuntimeError, match="same config to resume"):
        fit(cfg, mcfg, tmp_path / "part", log=lambda *a: None, resume=True)
    cfg_file = Path(__file__).resolve().parents[2] / "config/experiments/synthetic_smoke.yaml"
    assert main(["fit", "--config", str(cfg_file), "--out", str(tmp_path / "none"), "--resume", "--json"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_a_resumed_run_reports_the_time_of_all_its_chunks(tmp_path):
    """The run's time and throughput add up over the invocations that made it (they are kept in last.pt),
    so a chunked or killed-and-resumed run does not report only its last chunk; a checkpoint from before
    that (no time in it) says from which iteration the time is known."""
    from pathlib import Path

    from ms_perception_training.fit import fit, load_fit_config
    cfg, mcfg = load_fit_config(Path(__file__).resolve().parents[2] / "config/experiments/synthetic_smoke.yaml")
    cfg.iterations, cfg.data.pairs, cfg.threads, cfg.eval.pairs = 6, 12, 1, 0
    part = fit(cfg, mcfg, tmp_path / "a", log=lambda *a: None, stop_after=2)
    kept = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["progress"]
    assert kept["images"] == 2 * cfg.batch_size and kept["from_iteration"] == 0
    # the checkpoint holds the chunk's time up to its writing; the returned figure also counts closing
    # the loader's workers after it (0.2 s on a loaded CPU), so it can only be larger (0.05: rounding)
    assert 0 < kept["seconds"] <= part["run"]["seconds"] + 0.05
    whole = fit(cfg, mcfg, tmp_path / "a", log=lambda *a: None, resume=True)
    done = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["progress"]
    assert done["images"] == 6 * cfg.batch_size and done["from_iteration"] == 0
    # the run's time is the first chunk's plus the second's; the second's own figures stay as they were
    assert whole["run"]["seconds"] > kept["seconds"] and whole["run"]["from_iteration"] == 0
    assert done["seconds"] - kept["seconds"] < whole["run"]["seconds"]
    assert whole["run"]["images_per_second"] == pytest.approx(
        done["images"] / (done["wait"] + done["compute"]), rel=0.01)
    # a checkpoint written without the time (before fit kept it): the time counts from where it resumed
    fit(cfg, mcfg, tmp_path / "b", log=lambda *a: None, stop_after=4)
    ck = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    del ck["progress"]
    torch.save(ck, tmp_path / "b" / "last.pt")
    legacy = fit(cfg, mcfg, tmp_path / "b", log=lambda *a: None, resume=True)
    assert legacy["run"]["from_iteration"] == 4
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["progress"]["images"] == 2 * cfg.batch_size


def test_mutual_guidance_trains_through_the_cli(tmp_path, capsys):
    from pathlib import Path

    from ms_perception_training.cli import main
    cfg = Path(__file__).resolve().parents[2] / "config/experiments/mutual_guidance_smoke.yaml"
    assert main(["fit", "--config", str(cfg), "--out", str(tmp_path / "mg"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["iterations"] == 60 and s["last_loss"] < 0.8 * s["first_loss"]


def test_detection_loss_with_perfect_predictions_agrees_between_assigners():
    # predictions that regress exactly onto the object and score it: Mutual Guidance ranks the
    # same anchors first, so both assigners give the same classification/regression positives
    from types import SimpleNamespace

    from ms_perception_training.assign import IoUAssigner, MutualGuidanceAssigner
    from ms_perception_training.fit import detection_loss

    from ms_perception.core.anchors import BoxCoder
    anchors = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 4.7], [50, 50, 60, 60.]])
    gt = torch.tensor([[0, 0, 10, 10.]])
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    deltas = torch.zeros(1, 3, 4)        # anchor 0 exact; anchors 1, 2 keep their own boxes
    logits = torch.tensor([[[4.0], [-4.0], [-4.0]]])
    branch = SimpleNamespace(cls_logits=[logits.permute(0, 2, 1).reshape(1, 1, 1, 3)],
                             box_deltas=[deltas.permute(0, 2, 1).reshape(1, 4, 1, 3)])
    targets = [(gt, torch.tensor([0]))]
    a = detection_loss(branch, anchors, targets, 1, coder, IoUAssigner())
    b = detection_loss(branch, anchors, targets, 1, coder, MutualGuidanceAssigner())
    assert a[0].item() == pytest.approx(b[0].item()) and a[1].item() == pytest.approx(b[1].item())
