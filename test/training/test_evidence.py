"""The evidence protocol (issue [evidence]): convergence, claim labels by hand, and the driver's
resumable chunks on a synthetic KAIST-layout folder (dataset -> run -> run again -> summarize)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ms_perception_training.evidence import (Claim, bootstrap_summary, converged, late_changes, mean_loss_parts,
                                            operating_points, read_claim, scene_bootstrap)

REPO = Path(__file__).resolve().parents[2]


def _curve(points):
    return [{"iteration": it, "miss_rate": {"all": mr}} for it, mr in points]


def test_converged_reads_the_last_fifth():
    # last fifth of 1000 iterations: evaluations at 800, 900, 1000; 50.0 -> 49.2 moves 0.8 points
    assert converged(_curve([(100, 90.0), (500, 60.0), (800, 50.0), (900, 49.5), (1000, 49.2)])) is True
    # 50.0 -> 48.5 moves 1.5 points: still learning
    assert converged(_curve([(100, 90.0), (800, 50.0), (900, 49.0), (1000, 48.5)])) is False
    # it went up by 1.2 points: not settled either (the change, not the improvement, counts)
    assert converged(_curve([(800, 50.0), (1000, 51.2)])) is False
    # one evaluation in the last fifth cannot say
    assert converged(_curve([(500, 60.0), (1000, 49.0)])) is None
    assert converged([]) is None


def test_late_changes_by_hand():
    # the last fifth of 1000 iterations holds 800, 900, 1000: steps |49.5 - 50.0|, |51.0 - 49.5|
    assert late_changes(_curve([(100, 90.0), (500, 60.0), (800, 50.0), (900, 49.5), (1000, 51.0)])) == [0.5, 1.5]
    assert late_changes(_curve([(500, 60.0), (1000, 49.0)])) == [] and late_changes([]) == []


def test_operating_points_by_hand():
    from ms_perception.metrics.kaist import FPPI_POINTS, MissRateResult
    # the first, fifth and ninth reference points are FPPI 10^-2, 10^-1, 10^0
    assert FPPI_POINTS[[0, 4, 8]] == pytest.approx([0.01, 0.1, 1.0])
    r = MissRateResult(miss_rate=0.5, fppi=np.array([0.005, 0.05, 0.5, 2.0]), miss=np.array([0.9, 0.6, 0.3, 0.2]),
                       miss_at_points=np.linspace(0.9, 0.1, 9), num_images=10, num_gt=10, num_detections=4)
    # miss 0.9 / 0.5 / 0.1 at the three points; the last detection reaches recall 1 - 0.2 at FPPI 2
    assert operating_points(r) == {"mr_at_fppi_0.01": 90.0, "mr_at_fppi_0.1": 50.0, "mr_at_fppi_1": 10.0,
                                   "recall": 80.0, "fppi_at_recall": 2.0}
    none = MissRateResult(float("nan"), np.zeros(0), np.zeros(0), np.full(9, np.nan), 0, 0, 0)
    assert operating_points(none) == {"mr_at_fppi_0.01": None, "mr_at_fppi_0.1": None, "mr_at_fppi_1": None,
                                      "recall": 0.0, "fppi_at_recall": 0.0}


def test_mean_loss_parts_by_hand():
    rows = [{"iteration": 0, "kind": "train", "loss": 3.0, "lr": 0.1, "cls": 2.0, "inter": 1.0},
            {"iteration": 20, "kind": "train", "loss": 1.0, "lr": 0.1, "cls": 1.0},          # no inter this batch
            {"iteration": 20, "kind": "eval", "loss": 9.0},
            {"iteration": 40, "kind": "train", "loss": 7.0, "cls": 5.0}]
    # [0, 40): the two train rows; inter is averaged over the one row that logs it; lr is not a part
    assert mean_loss_parts(rows, 0, 40) == {"cls": 1.5, "inter": 1.0, "loss": 2.0}
    assert mean_loss_parts(rows, 40, 41) == {"cls": 5.0, "loss": 7.0}
    assert mean_loss_parts(rows, 100, 200) == {}


def _rows(vals, ok=True):
    return [{"seed": s, "miss_rate": {"all": v}, "converged": ok} for s, v in enumerate(vals)]


def test_claim_labels_by_hand():
    c = Claim("A beats B", "a", "b")
    got = read_claim(c, {"a": _rows([10.0, 11.0, 12.0]), "b": _rows([13.0, 14.0, 15.0])})
    assert got["label"] == "holds" and got["difference"] == 3.0
    assert got["a"] == {"mean": 11.0, "min": 10.0, "max": 12.0, "seeds": 3}
    # ranges touch at 12 -> 12: overlapping, not shown
    assert read_claim(c, {"a": _rows([10.0, 11.0, 12.0]), "b": _rows([12.0, 14.0, 15.0])})["label"] == "not shown"
    assert read_claim(c, {"a": _rows([20.0, 21.0, 22.0]), "b": _rows([13.0, 14.0, 15.0])})["label"] == "reversed"
    few = read_claim(c, {"a": _rows([10.0, 11.0]), "b": _rows([13.0, 14.0, 15.0])})
    assert few["label"] == "not read" and "a has 2 seed(s), needs 3" in few["why"]
    rows = _rows([10.0, 11.0, 12.0])
    rows[1]["converged"] = None
    late = read_claim(c, {"a": rows, "b": _rows([13.0, 14.0, 15.0])})
    assert late["label"] == "not read" and "a did not converge in seed(s) [1]" in late["why"]
    # the mean is kept unrounded, so a table's one rounding is right: 81.14 / 3 = 27.0467 -> 27.0
    odd = read_claim(c, {"a": _rows([20.85, 29.49, 30.8]), "b": _rows([59.32, 59.01, 61.89])})
    assert f"{odd['a']['mean']:.1f}" == "27.0" and abs(odd["a"]["mean"] - 27.04667) < 1e-4


def _driver(tmp_path):
    """``bench/evidence.py`` as a subprocess writing its rows under tmp_path/results (``env`` may be
    changed between calls), and a 24-pair KAIST folder written by its ``dataset`` command."""
    env = {**os.environ, "MS_PERCEPTION_EVIDENCE_RESULTS": str(tmp_path / "results")}
    script = [sys.executable, str(REPO / "bench" / "evidence.py")]

    def call(*args):
        r = subprocess.run(script + list(args), capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout

    root = tmp_path / "kaist"
    call("dataset", "--root", str(root), "--pairs", "24", "--size", "160x128")
    return call, env, root


def test_driver_trains_in_resumable_chunks_on_a_kaist_folder(tmp_path):
    call, env, root = _driver(tmp_path)
    assert any(root.iterdir())
    run = ["run", "--root", str(root), "--tag", "t", "--seeds", "0", "--arms", "add_fusion", "--iterations", "4",
           "--eval-every", "2", "--chunk", "2", "--input", "128x96", "--workers", "0", "--work", str(tmp_path / "w")]
    first = call(*run)
    assert "add_fusion seed 0: chunk done" in first and "1 run(s) still pending" in first
    second = call(*run)
    rows = [json.loads(x) for x in (tmp_path / "results" / "evidence_t_seed0.jsonl").read_text().splitlines()]
    assert "every run is done" in second and len(rows) == 1
    row = rows[0]
    # 4 iterations in chunks of 2: the curve holds the evaluations of both calls
    assert row["arm"] == "add_fusion" and [r["iteration"] for r in row["curve"]] == [2, 4]
    # the last fifth (iterations >= 3.2) holds one evaluation: convergence unknown, so no claim reads it
    assert row["converged"] is None and row["wall_seconds"] > 0
    # the time is the run's, both chunks (fit keeps it in last.pt), so the row claims no partial timing
    assert "timed_from_iteration" not in row and row["images_per_second"] > 0
    import torch
    assert row["environment"]["torch"] == torch.__version__ and row["environment"]["numpy"] == np.__version__
    # the same seed in one go, in another work folder: the same weights bit for bit as the two chunks
    # (the resume is exact, and a run is reproducible on one machine and environment)
    once = run[:run.index("--chunk")] + ["--input", "128x96", "--workers", "0", "--work", str(tmp_path / "w2")]
    env["MS_PERCEPTION_EVIDENCE_RESULTS"] = str(tmp_path / "results2")
    call(*once)
    a = torch.load(tmp_path / "w" / "t" / "add_fusion_s0" / "last.pt", weights_only=True, map_location="cpu")
    b = torch.load(tmp_path / "w2" / "t" / "add_fusion_s0" / "last.pt", weights_only=True, map_location="cpu")
    assert a["iteration"] == b["iteration"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "same seed, different weights"
    env["MS_PERCEPTION_EVIDENCE_RESULTS"] = str(tmp_path / "results")
    table = call("summarize", "--tag", "t", "--min-seeds", "1", "--plot", str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").stat().st_size > 0
    r = subprocess.run([sys.executable, str(REPO / "bench" / "evidence.py"), "summarize", "--tag", "t", "--plot",
                        str(tmp_path / "none.png"), "--plot-arms", "visible_only"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 1 and "--plot: no run of visible_only" in r.stdout and not (tmp_path / "none.png").exists()
    assert "| add_fusion | 0 | 4 |" in table and "fusion beats visible-only at night" in table
    assert "visible_only has 0 seed(s), needs 1" in table
    assert "Change of MR (all) from one evaluation to the next over the last fifth, 0 steps" not in table
    # the MR-FPPI curves re-evaluate the final checkpoint on the same test split: the same miss rates
    # as the run's last evaluation, recomputed from the saved weights (a wrong checkpoint, split or
    # model config would not reproduce them)
    out = call("curves", "--root", str(root), "--tag", "t", "--seed", "0", "--arms", "add_fusion", "--input",
               "128x96", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "mr"))
    got = json.loads(out.strip().splitlines()[-1])["add_fusion"]
    points = json.loads(next(x for x in out.splitlines() if x.startswith("add_fusion all: ")).split(": ", 1)[1])
    assert set(points) == {"mr_at_fppi_0.01", "mr_at_fppi_0.1", "mr_at_fppi_1", "recall", "fppi_at_recall"}
    for k, v in row["miss_rate"].items():
        assert (got[k] is None and v is None) or abs(got[k] - v) < 0.01, (k, got, row["miss_rate"])
    assert (tmp_path / "mr_all.png").stat().st_size > 0 and (tmp_path / "mr_night.png").stat().st_size > 0
    # the test split's own noise: the same model's MR first (as the run recorded it), then its spread
    out = call("noise", "--root", str(root), "--tag", "t", "--seed", "0", "--arms", "add_fusion", "--input",
               "128x96", "--work", str(tmp_path / "w"), "--resamples", "20")
    noise = json.loads(out.strip().splitlines()[-1].split(": ", 1)[1])
    assert noise["test_pairs"] == 4 and noise["scenes"] == 1      # 24 pairs: the 5th scene of 4 is the test split
    assert abs(noise["all"]["miss_rate"] - row["miss_rate"]["all"]) < 0.01
    assert noise["all"]["resamples"] == 20 and noise["all"]["bootstrap_std"] == 0.0   # one scene: every resample is it
    # the loss parts of the run: the first and last fifth of its metrics.jsonl
    out = call("parts", "--tag", "t", "--seeds", "0", "--arms", "add_fusion", "--work", str(tmp_path / "w"))
    parts = json.loads(out.strip().splitlines()[-1].split(": ", 1)[1])
    assert {"loss", "fused_cls", "fused_box"} <= set(parts["first_fifth"]) and parts["last_fifth"]


def test_a_student_whose_teacher_weights_are_gone_is_named_and_left_pending(tmp_path):
    # the teacher's row is recorded but its checkpoint is not in this --work (another machine, a
    # wiped /tmp): one line naming the file and the fix, the run stays pending, nothing trains
    results = tmp_path / "results"
    results.mkdir()
    (results / "evidence_t_seed0.jsonl").write_text(json.dumps({"arm": "gaff", "seed": 0}) + "\n")
    env = {**os.environ, "MS_PERCEPTION_EVIDENCE_RESULTS": str(results)}
    r = subprocess.run([sys.executable, str(REPO / "bench" / "evidence.py"), "run", "--root", str(tmp_path / "none"),
                        "--tag", "t", "--seeds", "0", "--arms", "md_distilled_16x", "--iterations", "4",
                        "--eval-every", "2", "--work", str(tmp_path / "w")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "md_distilled_16x seed 0: its teacher gaff is done" in r.stdout
    assert str(tmp_path / "w" / "t" / "gaff_s0") + "/last.pt is missing" in r.stdout
    assert "1 run(s) still pending" in r.stdout
    assert not (tmp_path / "w" / "t" / "md_distilled_16x_s0").exists()
    assert (results / "evidence_t_seed0.jsonl").read_text().count("\n") == 1


def test_retrain_teachers_reproduces_a_lost_teacher_before_its_students_use_it(tmp_path):
    # the teacher's row is recorded, its weights are gone: --retrain-teachers trains it again (no second
    # row) and lets its students use it only when the new curve equals the recorded one
    results = tmp_path / "results"
    call, _, root = _driver(tmp_path)
    run = ["run", "--root", str(root), "--tag", "t", "--seeds", "0", "--iterations", "4", "--eval-every", "2",
           "--input", "128x96", "--workers", "0", "--work", str(tmp_path / "w")]
    call(*run, "--arms", "gaff")
    rows = results / "evidence_t_seed0.jsonl"
    recorded = json.loads(rows.read_text())
    import shutil
    shutil.rmtree(tmp_path / "w" / "t" / "gaff_s0")
    # a tampered record: the retrained teacher cannot match it, so no student trains from it
    tampered = {**recorded, "curve": [{**p, "miss_rate": {**p["miss_rate"], "all": 1.0}} for p in recorded["curve"]],
                "miss_rate": {**recorded["miss_rate"], "all": 1.0}}
    rows.write_text(json.dumps(tampered) + "\n")
    out = call(*run, "--arms", "md_distilled_64x", "--retrain-teachers")
    assert "gaff seed 0: the retrained teacher does not reproduce its recorded curve" in out, out
    assert "1 run(s) still pending" in out
    assert not (tmp_path / "w" / "t" / "gaff_s0").exists() and not (tmp_path / "w" / "t" / "md_distilled_64x_s0").exists()
    # asked to accept it: the finished retrain is picked up, and the student's row says which teacher it had
    out = call(*run, "--arms", "md_distilled_64x", "--retrain-teachers", "--accept-retrained-teachers")
    assert "gaff seed 0: weights retrained, NOT the recorded curve" in out and "every run is done" in out, out
    student = json.loads(rows.read_text().splitlines()[-1])
    info = student["teacher_retrained"]
    assert student["arm"] == "md_distilled_64x" and info["reproduced"] is False
    assert info["recorded_miss_rate"]["all"] == 1.0 and info["retrained_miss_rate"] == recorded["miss_rate"]
    # the true record: reproduced bit for bit on this machine, moved into --work, and the student trains
    shutil.rmtree(tmp_path / "w" / "t.retrain")
    shutil.rmtree(tmp_path / "w" / "t")
    rows.write_text(json.dumps(recorded) + "\n")
    out = call(*run, "--arms", "md_distilled_64x", "--retrain-teachers")
    assert "gaff seed 0: weights retrained, the recorded curve reproduced exactly" in out, out
    assert "md_distilled_64x seed 0: done" in out and "every run is done" in out
    got = [json.loads(x) for x in rows.read_text().splitlines()]
    assert [r["arm"] for r in got] == ["gaff", "md_distilled_64x"]     # no second teacher row
    assert got[1]["teacher_retrained"]["reproduced"] is True
    assert (tmp_path / "w" / "t" / "gaff_s0" / "last.pt").exists()


def test_scene_bootstrap_resamples_whole_scenes_by_hand():
    # two scenes of two frames, values 0 0 | 1 1; the mean over a resample of 2 scenes is 0, 0.5 or
    # 1 with probabilities 1/4, 1/2, 1/4: standard deviation sqrt(1/8) = 0.3536
    values = np.array([0.0, 0.0, 1.0, 1.0])
    seen = []

    def mean(idx):
        seen.append(sorted(idx))
        return float(values[idx].mean())

    got = scene_bootstrap(["a", "a", "b", "b"], mean, resamples=4000, seed=1)
    assert abs(got.std() - np.sqrt(1 / 8)) < 0.02 and abs(got.mean() - 0.5) < 0.03
    assert set(np.round(got, 6)) == {0.0, 0.5, 1.0}
    # every resample holds whole scenes, as many scenes as there are
    assert {tuple(x) for x in seen} == {(0, 0, 1, 1), (0, 1, 2, 3), (2, 2, 3, 3)}
    # the same seed, the same resamples
    assert np.array_equal(got, scene_bootstrap(["a", "a", "b", "b"], lambda i: float(values[i].mean()), 4000, 1))


def test_bootstrap_summary_by_hand():
    # a paired difference on the same resamples, NaN where a subset had no person: [1, 3] remain
    a, b = np.array([1.0, 2.0, np.nan]), np.array([2.0, 5.0, 5.0])
    got = bootstrap_summary(b - a)
    assert got == {"bootstrap_std": 1.0, "p5": 1.1, "p95": 2.9, "resamples": 2}
    assert bootstrap_summary(np.array([np.nan]))["resamples"] == 0


def test_maf_weights_reads_a_trained_cfl_maf_run(tmp_path):
    # bench/maf_weights.py on an evidence run of cfl_maf: one line per seed with the thermal weight μ
    # by condition, over every test pair of that condition; a seed without weights is named
    env = {**os.environ, "MS_PERCEPTION_EVIDENCE_RESULTS": str(tmp_path / "results")}

    def call(script, *args, rc=0):
        r = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True,
                           env=env, timeout=600)
        assert r.returncode == rc, r.stderr[-3000:]
        return r

    root = tmp_path / "kaist"
    call("evidence.py", "dataset", "--root", str(root), "--pairs", "40", "--size", "160x128")
    call("evidence.py", "run", "--root", str(root), "--tag", "t", "--seeds", "0", "--arms", "cfl_maf",
         "--iterations", "2", "--eval-every", "2", "--input", "128x96", "--workers", "0", "--work", str(tmp_path / "w"))
    out = call("maf_weights.py", "--root", str(root), "--tag", "t", "--seeds", "0", "1", "--input", "128x96",
               "--work", str(tmp_path / "w")).stdout
    r = json.loads(out.strip().splitlines()[-1])
    test = (root / "imageSets" / "test.txt").read_text().split()
    condition = {}
    for line in (root / "synth_meta.jsonl").read_text().splitlines():
        m = json.loads(line)
        condition[m["name"]] = m["condition"]
    assert r["seed"] == 0 and r["pairs"] == len(test)
    assert sum(v["pairs"] for k, v in r.items() if isinstance(v, dict)) == len(test)
    for c in ("day", "dusk", "fog", "night"):
        n = sum(condition[x] == c for x in test)
        assert (r[c]["pairs"] if c in r else 0) == n, (c, r, n)
        if n:
            assert 0.0 < r[c]["p5"] <= r[c]["thermal_weight_mean"] <= r[c]["p95"] < 1.0
    missing = call("maf_weights.py", "--root", str(root), "--tag", "t", "--seeds", "1", "--input", "128x96",
                   "--work", str(tmp_path / "w"), rc=1)
    assert "cfl_maf seed 1: no " in missing.stderr and "train it with bench/evidence.py run" in missing.stderr


def test_arm_overrides_reach_nested_fit_fields(tmp_path):
    """The Table IV ablation arms set one distillation weight each through a dotted key
    ("distill.epsilon"); a key the fit config lacks is refused by name."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import train_experiments as te
    finally:
        sys.path.remove(str(REPO / "bench"))
    weights = {}
    for arm in ("rgb_only_cm_hard", "rgb_only_cm_bbr", "rgb_only_cm_fea", "rgb_only_distilled"):
        cfg, _, tcfg, teacher = te.arm_configs(arm, tmp_path)
        d = cfg.distill
        weights[arm] = (d.method, d.zeta, d.epsilon, d.xi, d.rho, teacher, tcfg is not None)
    assert weights["rgb_only_cm_hard"] == ("crossmodal", 1.0, 0.0, 1.0, 0.0, "cfl_maf", True)
    assert weights["rgb_only_cm_bbr"] == ("crossmodal", 1.0, 0.5, 1.0, 0.0, "cfl_maf", True)
    assert weights["rgb_only_cm_fea"] == ("crossmodal", 1.0, 0.0, 1.0, 0.5, "cfl_maf", True)
    assert weights["rgb_only_distilled"] == ("crossmodal", 0.5, 0.5, 0.5, 0.5, "cfl_maf", True)
    cfg, _, tcfg, teacher = te.arm_configs("rgb_only_plain_smoothl1", tmp_path)
    assert (cfg.balanced_l1, cfg.distill.method, tcfg, teacher) == (False, "", None, None)
    assert te.arm_configs("rgb_only_plain", tmp_path)[0].balanced_l1 is True
    te.ARMS["_bad"] = ("crossmodal_smoke", {"distill.nope": 1.0}, None, None)
    try:
        with pytest.raises(KeyError, match="distill.nope"):
            te.arm_configs("_bad", tmp_path)
    finally:
        del te.ARMS["_bad"]


def _train_experiments():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import train_experiments as te
    finally:
        sys.path.remove(str(REPO / "bench"))
    return te


def test_active_table_labels_the_final_budget_by_hand():
    """Inconsistency vs each baseline at the last labeled-pair count, over 3 seeds: lower MR is better
    for detection, higher mIoU for segmentation; ranges that touch are "not shown"."""
    te = _train_experiments()

    def runs(task, final):   # final[strategy] = the three seeds' values at the last count
        return [{"task": task, "curves": {s: [[50, 1.0], [100, v[k]]] for s, v in final.items()}} for k in range(3)]
    det = te.active_table(runs("detection", {"inconsistency": [60, 61, 62], "random": [63, 64, 65],
                                             "entropy": [59, 62, 66]}))
    assert "person MR all ↓" in det and "| inconsistency | 3 | 1.0 [1.0–1.0] | 61.0 [60.0–62.0] |" in det
    assert "beats random at 100 labeled pairs: holds." in det
    assert "beats entropy at 100 labeled pairs: not shown (the ranges overlap)." in det
    seg = te.active_table(runs("segmentation", {"inconsistency": [60, 61, 62], "random": [63, 64, 65],
                                                "entropy": [50, 55, 60]}))
    assert "mIoU ↑" in seg
    assert "beats random at 100 labeled pairs: reversed." in seg
    assert "beats entropy at 100 labeled pairs: not shown (the ranges overlap)." in seg
    two = te.active_table(runs("segmentation", {"inconsistency": [70, 71, 72], "random": [63, 64, 65]})[:2])
    assert "beats random at 100 labeled pairs: not read (2 seed(s), needs 3)." in two


def test_the_segmentation_protocol_runs_the_papers_budgets_on_the_segmentation_model(tmp_path, monkeypatch):
    """`--active --active-protocol seg_cpu`: the 1x1-conv three-branch model, b = 50, B = 350
    (ICIP 2021's segmentation budgets); `seg_cpu_3k` the same on a 3,000-pair pool; `seg_cpu_3k_scenes`
    that pool with every pair its own scene (pool and held-out pairs); the detection protocol keeps
    its model and budgets."""
    te = _train_experiments()
    from ms_perception_training import active
    from ms_perception_training.models.config import load_model_config
    seen = {}

    def fake_run_active(cfg, out, log=print):
        seen[out.name] = (load_model_config(cfg.model).task, cfg.initial, cfg.step, cfg.budget, cfg.data.pairs,
                          cfg.eval.pairs, cfg.data.width, cfg.data.sequence_length)
        (out / "curve.png").parent.mkdir(parents=True, exist_ok=True)
        (out / "curve.png").write_bytes(b"png " + out.name.encode())
        return {"curves": {}, "plot": str(out / "curve.png")}
    monkeypatch.setattr(active, "run_active", fake_run_active)
    monkeypatch.setattr(te, "RESULTS", tmp_path / "results")
    assert te.run_active_experiment(1, tmp_path, "seg_cpu")["task"] == "segmentation"
    te.run_active_experiment(1, tmp_path, "cpu")
    te.run_active_experiment(2, tmp_path, "seg_cpu_3k")
    te.run_active_experiment(0, tmp_path, "seg_cpu_3k_scenes")
    te.run_active_experiment(0, tmp_path, "cpu_3k_scenes")
    assert seen == {"active_seg_cpu_s1": ("segmentation", 50, 50, 350, 500, 300, 512, 20),
                    "active_cpu_s1": ("detection", 100, 100, 400, 500, 300, 512, 20),
                    "active_seg_cpu_3k_s2": ("segmentation", 50, 50, 350, 3000, 300, 512, 20),
                    "active_seg_cpu_3k_scenes_s0": ("segmentation", 50, 50, 350, 3000, 300, 512, 1),
                    "active_cpu_3k_scenes_s0": ("detection", 100, 100, 400, 3000, 300, 512, 1)}
    assert json.loads((tmp_path / "results" / "active_seg_cpu_seed1.json").read_text())["protocol"] == "seg_cpu"
    row = json.loads((tmp_path / "results" / "active_seg_cpu_3k_scenes_seed0.json").read_text())
    assert (row["protocol"], row["frames_per_scene"]) == ("seg_cpu_3k_scenes", 1)
    assert (tmp_path / "results" / "active_seg_cpu_seed1.png").read_bytes() == b"png active_seg_cpu_s1"


def test_active_picks_counts_scenes_and_shared_pairs_from_each_strategys_state(tmp_path, monkeypatch):
    """`--active-picks`: the picks beyond the initial pairs, mapped to the pool's generated pairs
    (here 8 pairs, 2 frames per scene: pairs 2k and 2k + 1 are scene k), counted by hand."""
    te = _train_experiments()
    from ms_perception.synth.generator import PERSON
    from ms_perception_training.data.sources import synth_generator
    monkeypatch.setitem(te.ACTIVE_PROTOCOLS, "tiny", ("segmentation", 8, 4, 2, 2, 6, 1, 1, 1, 2))
    labeled = {"inconsistency": [0, 4, 1, 2, 3, 5], "random": [0, 4, 1, 3, 5, 7], "entropy": [0, 4, 2, 3, 6, 7]}
    for st, lab in labeled.items():
        (tmp_path / "active_tiny_s0" / st).mkdir(parents=True)
        (tmp_path / "active_tiny_s0" / st / "state.json").write_text(json.dumps({"initial": [0, 4], "labeled": lab}))
    out = te.active_picks("tiny", [0], tmp_path)
    pairs = list(synth_generator(te.active_config(0, "tiny").data).pairs(8))
    assert [p.sequence_id for p in pairs] == [0, 0, 1, 1, 2, 2, 3, 3]
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in out.splitlines()
            if ln.startswith("| ") and not ln.startswith("| picks")}

    def night_people(idx):
        return (f"{np.mean([pairs[i].condition == 'night' for i in idx]):.2f}",
                f"{np.mean([sum(o.class_id == PERSON for o in pairs[i].objects) for i in idx]):.2f}",
                f"{np.mean([any(o.crossover for o in pairs[i].objects) for i in idx]):.2f}",
                f"{np.mean([len(pairs[i].distractors) > 0 for i in idx]):.2f}")
    # picks {1, 2, 3, 5}: scenes 0, 1, 1, 2; {1, 3, 5, 7}: four scenes; {2, 3, 6, 7}: scenes 1 and 3
    assert rows["inconsistency"] == ["4", "3", "2", *night_people([1, 2, 3, 5])]
    assert rows["random"] == ["4", "4", "1", *night_people([1, 3, 5, 7])]
    assert rows["entropy"] == ["4", "2", "2", *night_people([2, 3, 6, 7])]
    assert rows["the whole pool"] == ["8", "4", "2", *night_people(range(8))]
    assert "inconsistency and random share 5 of their labeled pairs" in out
    assert "entropy and inconsistency share 4 " in out and "entropy and random share 4 " in out


def test_active_curves_over_seeds_plot_the_mean_and_range_at_each_budget(tmp_path):
    """`--summarize --plot`: per strategy, the mean and min–max over seeds at each labeled-pair
    count (a seed without a value at a count is left out there), drawn to a PNG."""
    te = _train_experiments()
    results = [{"task": "segmentation", "protocol": "hand",
                "curves": {"inconsistency": [[50, 10.0], [100, 20.0]], "random": [[50, 10.0], [100, 14.0]]}},
               {"task": "segmentation", "protocol": "hand",
                "curves": {"inconsistency": [[50, 12.0], [100, 23.0]], "random": [[50, 12.0], [100, None]]}}]
    drawn = te.active_plot(results, tmp_path / "curves.png")
    assert drawn == {"inconsistency": [(11.0, 10.0, 12.0), (21.5, 20.0, 23.0)],
                     "random": [(11.0, 10.0, 12.0), (14.0, 14.0, 14.0)]}
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = te.active_table(results)
    assert "| inconsistency | 2 | 11.0 [10.0–12.0] | 21.5 [20.0–23.0] |" in table
    assert "| random | 2 | 11.0 [10.0–12.0] | 14.0 |" in table


def test_md_factors_table_and_plot_from_hand_rows(tmp_path):
    """`evidence.py factors`: mean [min–max] per thermal factor, one * per unconverged seed, the
    distilled − native difference and the paper's Table 3 beside them; the plot is drawn."""
    res = tmp_path / "results"
    res.mkdir()
    mr = {("md_native_4x", 0): 70.0, ("md_native_4x", 1): 66.0, ("md_native_4x", 2): 68.0,
          ("md_distilled_4x", 0): 61.0, ("md_distilled_4x", 1): 65.0, ("md_distilled_4x", 2): 66.0,
          ("gaff", 0): 47.0, ("mdp_native_16x", 0): 71.0, ("mdp_native_16x", 1): 69.0, ("mdp_teacher", 0): 50.0}
    for seed in range(3):
        rows = [{"arm": a, "seed": s, "converged": (a, s) != ("md_distilled_4x", 2),
                 "miss_rate": {"all": v, "day": v, "night": v - 2}} for (a, s), v in mr.items() if s == seed]
        (res / f"evidence_hand_seed{seed}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = tmp_path / "factors.png"
    out = subprocess.run([sys.executable, str(REPO / "bench" / "evidence.py"), "factors", "--tag", "hand", "--plot",
                          str(png)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MS_PERCEPTION_EVIDENCE_RESULTS": str(res)})
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("| 4x fewer pixels"))
    assert row == ("| 4x fewer pixels | 68.0 [66.0–70.0] (3) | 64.0 [61.0–66.0] (3*) | -4.0 | "
                   "66.0 [64.0–68.0] (3) | 62.0 [59.0–64.0] (3*) | 9.84 → 7.91 |")
    assert "| 16x fewer pixels | – | – | – | – | – | 10.17 → 8.03 |" in out.stdout
    assert "Teacher (GAFF two-stream, full-resolution thermal): 47.0 [47.0–47.0] (1)" in out.stdout
    # the paper's pair only where it ran: 16x native alone
    assert ("| 16x fewer pixels, the paper's pair (light head) | 70.0 [69.0–71.0] (2) | – | – | "
            "68.0 [67.0–69.0] (2) | – | 10.17 → 8.03 |") in out.stdout
    assert "4x fewer pixels, the paper's pair" not in out.stdout
    assert "The paper's teacher (GAFF at every level, light head), of the paper's-pair rows: 50.0 [50.0–50.0] (1)." \
        in out.stdout
    assert png.stat().st_size > 5000


def test_best_practice_arms_switch_one_practice_at_a_time(tmp_path):
    """Thesis Table 3.2 as cumulative arms on the visible-only RetinaNet-R18: baseline (smooth L1, step
    schedule) -> + CEM -> + mixup with warmup and cosine -> + balanced L1; the CEM arm's model has one."""
    te = _train_experiments()
    from ms_perception_training.models.build import build_model
    got = {}
    for arm in ("bp_baseline", "bp_cem", "bp_cem_cosine", "bp_cem_mixup_cosine", "bp_all", "visible_only"):
        cfg, mcfg, tcfg, teacher = te.arm_configs(arm, tmp_path)
        got[arm] = (cfg.balanced_l1, cfg.lr_schedule, cfg.mixup, mcfg.neck.cem, mcfg.fusion.scheme, teacher)
    assert got == {"bp_baseline": (False, "step", 0.0, False, "visible_only", None),
                   "bp_cem": (False, "step", 0.0, True, "visible_only", None),
                   "bp_cem_cosine": (False, "cosine", 0.0, True, "visible_only", None),
                   "bp_cem_mixup_cosine": (False, "cosine", 0.5, True, "visible_only", None),
                   "bp_all": (True, "cosine", 0.5, True, "visible_only", None),
                   "visible_only": (True, "cosine", 0.0, False, "visible_only", None)}
    with_cem = build_model(te.arm_configs("bp_cem", tmp_path)[1])
    without = build_model(te.arm_configs("bp_baseline", tmp_path)[1])
    assert any(type(m).__name__ == "CEM" for m in with_cem.modules())
    assert not any(type(m).__name__ == "CEM" for m in without.modules())


def test_multi_scale_arm_trains_at_0_8_1_and_1_2_of_its_input(tmp_path, monkeypatch):
    """Thesis §3.4.1: 256/320/384 in training for a 320 evaluation, i.e. 0.8, 1 and 1.2 of the input,
    rounded to a multiple of 4; the arm follows the protocol's input size. Otherwise the baseline."""
    te = _train_experiments()
    cfg, mcfg, _, _ = te.arm_configs("bp_baseline_ms", tmp_path)
    base, _, _, _ = te.arm_configs("bp_baseline", tmp_path)
    assert (mcfg.input.width, mcfg.input.height) == (256, 192)
    assert cfg.multi_scale == [[204, 152], [256, 192], [308, 232]]     # 204.8, 153.6 / 307.2, 230.4
    assert (cfg.balanced_l1, cfg.lr_schedule, cfg.mixup, base.multi_scale) == (False, "step", 0.0, [])
    monkeypatch.setitem(te.SCALE, "input", {"width": 640, "height": 512})
    assert te.arm_configs("bp_baseline_ms", tmp_path)[0].multi_scale == [[512, 408], [640, 512], [768, 616]]


def test_md_paper_pair_arms_distil_from_their_own_teacher_arm(tmp_path):
    """The paper's pair: the distilled student's teacher is the mdp_teacher arm's model (GAFF at every
    level, light head at 1/8 of 128 channels), distilled at C4; the student has one 16-channel conv
    per head branch and 16x fewer thermal pixels; the older MD arms keep the C4 GAFF teacher."""
    import torch
    from types import SimpleNamespace
    from ms_perception_training.distillers import ModalityDistiller, build_distiller
    from ms_perception_training.models.build import build_model
    te = _train_experiments()
    cfg, scfg, tcfg, teacher = te.arm_configs("mdp_distilled_16x", tmp_path)
    own = te.arm_configs("mdp_teacher", tmp_path)[1]
    assert teacher == "mdp_teacher" and cfg.distill.method == "modality" and cfg.distill.md_stage == "C4"
    assert (tcfg.fusion.module, tcfg.fusion.stage, tcfg.neck.channels, tcfg.head.channels, tcfg.head.num_convs) == \
        ("gaff", "all_levels", 16, 16, 1)
    assert {k: v for k, v in vars(tcfg).items() if k != "name"} == {k: v for k, v in vars(own).items() if k != "name"}
    assert (scfg.fusion.scheme, scfg.input.thermal_factor, scfg.head.channels, scfg.head.num_convs) == ("image", 16, 16, 1)
    assert te.arm_configs("mdp_native_16x", tmp_path)[0].distill.method == ""
    sem = te.arm_configs("mdp_distilled_16x_sem01", tmp_path)
    assert (sem[0].distill.md_semantic_weight, sem[0].distill.md_attention_weight, cfg.distill.md_semantic_weight,
            sem[0].distill.md_stage, sem[3]) == (0.1, 1.0, 1.0, "C4", "mdp_teacher")
    c5 = te.arm_configs("mdp_distilled_16x_c5", tmp_path)
    assert (c5[0].distill.md_stage, c5[0].distill.md_semantic_weight, c5[3]) == ("C5", 1.0, "mdp_teacher")
    d5 = build_distiller(c5[0].distill, build_model(c5[2]), c5[2], build_model(c5[1]), c5[1],
                         SimpleNamespace(visible=torch.rand(1, 3, 192, 256), thermal=torch.rand(1, 1, 192, 256)))
    assert (d5.t_key, d5.att_prefix) == ("fused.C5", "C5.")
    far = te.arm_configs("mdp_distilled_64x", tmp_path)
    assert (far[1].input.thermal_factor, far[1].head.channels, far[3]) == (64, 16, "mdp_teacher")
    assert {k: v for k, v in vars(far[2]).items() if k != "name"} == {k: v for k, v in vars(own).items() if k != "name"}
    old = te.arm_configs("md_distilled_16x", tmp_path)[2]
    assert (old.fusion.stage, old.head.channels, old.head.num_convs) == ("C4", 32, 2)
    torch.manual_seed(0)
    probe = SimpleNamespace(visible=torch.rand(1, 3, 192, 256), thermal=torch.rand(1, 1, 192, 256))
    d = build_distiller(cfg.distill, build_model(tcfg), tcfg, build_model(scfg), scfg, probe)
    assert isinstance(d, ModalityDistiller) and (d.t_key, d.att_prefix) == ("fused.C4", "C4.")


def test_psfuse_arms_are_the_thesis_settings_a_and_b(tmp_path):
    """Thesis §4.2: setting A halves the mono features per level, setting B keeps them at C/2; both
    double the fused features. At the protocol's 1/8 width the replaced conv4 stage has C = 64 channels.
    The two arms differ in the setting only."""
    te = _train_experiments()
    from ms_perception_training.models.build import build_model
    from ms_perception_training.models.fusion.psfuse import PSFuse
    a = te.arm_configs("psfuse", tmp_path)
    b = te.arm_configs("psfuse_b", tmp_path)
    assert (a[1].fusion.module, a[1].fusion.psfuse.setting, b[1].fusion.module, b[1].fusion.psfuse.setting) == \
        ("psfuse", "A", "psfuse", "B")
    assert {k: v for k, v in vars(a[1]).items() if k not in ("name", "fusion")} == \
        {k: v for k, v in vars(b[1]).items() if k not in ("name", "fusion")}
    assert vars(a[0]) == vars(b[0]) and a[2:] == b[2:] == (None, None)
    ps = {s: next(m for m in build_model(cfg).modules() if isinstance(m, PSFuse)) for s, cfg in (("A", a[1]), ("B", b[1]))}
    assert (ps["A"].out_channels, ps["A"].mono_channels, ps["B"].mono_channels) == (64, [32, 16, 8], [32, 32, 32])
    assert [c[0].out_channels for c in ps["B"].f3] == [c[0].out_channels for c in ps["A"].f3] == [16, 32, 64]


def test_pdf_arms_differ_in_the_weight_map_only(tmp_path):
    """Thesis Table 3.5: FitNets (uniform), hard top-25 % sampling and PDF-Distil (adaptive L2 weights)
    share the student, the teacher arm and its model; only the weight map differs. On a 2x2 disagreement
    map D = [3, 1, 2, 0]: adaptive 4·D/6, hard top-25 % puts all the weight (mean 1) on the top location."""
    import torch
    from ms_perception_training.losses.distill import pdf_weights
    te = _train_experiments()
    arms = {a: te.arm_configs(a, tmp_path) for a in ("pdf_distil", "pdf_fitnets", "pdf_hard25")}
    for a, (cfg, scfg, tcfg, teacher) in arms.items():
        assert (cfg.distill.method, cfg.distill.pdf_metric, teacher) == ("pdf", "l2", "pdf_teacher"), a
        assert vars(scfg) | {"name": ""} == vars(arms["pdf_distil"][1]) | {"name": ""}, a
        assert vars(tcfg) | {"name": ""} == vars(arms["pdf_distil"][2]) | {"name": ""}, a
    d = torch.tensor([[[3.0, 1.0], [2.0, 0.0]]])
    maps = {a: pdf_weights(d, c[0].distill.pdf_weights, c[0].distill.pdf_top_fraction).flatten().tolist()
            for a, c in arms.items()}
    assert maps["pdf_distil"] == pytest.approx([2.0, 2 / 3, 4 / 3, 0.0])
    assert maps["pdf_fitnets"] == [1.0, 1.0, 1.0, 1.0]
    assert maps["pdf_hard25"] == [4.0, 0.0, 0.0, 0.0]
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import evidence as ev
    finally:
        sys.path.remove(str(REPO / "bench"))
    claims = {c[0]: c for c in ev.CLAIMS}
    assert claims["PDF-Distil beats hard top-25 % sampling (Table 3.5)"][1:] == \
        ("pdf_distil", "pdf_hard25", "all", ("PDF teacher beats the plain student",))
    assert "pdf_hard25" in next(arms for title, arms in te.COMPARISONS if title.startswith("PDF-Distil"))


def test_pdf_wider_teacher_arms(tmp_path):
    """The wider PDF teacher (PDF_WIDE: R34-PAFPN at 1/4 width, 64-channel neck and head) and its three
    students: each student is the 1/8-width R18-FPN of its session-26 arm with the same weight map,
    distilled from exactly the teacher arm's model; its claims wait on the wider teacher beating the
    plain student."""
    te = _train_experiments()
    teacher = te.arm_configs("pdf_teacher_w025", tmp_path)[1]
    assert (teacher.backbone.width, teacher.neck.channels, teacher.head.channels) == (0.25, 64, 64)
    assert (teacher.input.width, teacher.input.height) == (256, 192)
    for wide, narrow in (("pdf_distil_wt", "pdf_distil"), ("pdf_fitnets_wt", "pdf_fitnets"), ("pdf_hard25_wt", "pdf_hard25")):
        cfg, scfg, tcfg, t = te.arm_configs(wide, tmp_path)
        ncfg, nscfg, ntcfg, _ = te.arm_configs(narrow, tmp_path)
        assert t == "pdf_teacher_w025" and vars(scfg) | {"name": ""} == vars(nscfg) | {"name": ""}, wide
        assert vars(tcfg) | {"name": ""} == vars(teacher) | {"name": ""}, wide
        assert (tcfg.backbone.width, ntcfg.backbone.width) == (0.25, 0.125)
        assert (cfg.distill.pdf_weights, cfg.distill.pdf_top_fraction) == (ncfg.distill.pdf_weights,
                                                                            ncfg.distill.pdf_top_fraction)
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import evidence as ev
    finally:
        sys.path.remove(str(REPO / "bench"))
    claims = {c[0]: c for c in ev.CLAIMS}
    assert claims["the wider PDF teacher beats the plain student"][1:] == ("pdf_teacher_w025", "pdf_none", "all", ())
    need = ("the wider PDF teacher beats the plain student",)
    assert [c[1:] for n, c in claims.items() if n.endswith("(the wider teacher)")] == [
        ("pdf_distil_wt", "pdf_none", "all", need), ("pdf_distil_wt", "pdf_fitnets_wt", "all", need),
        ("pdf_distil_wt", "pdf_hard25_wt", "all", need)]


def test_summary_says_when_a_rows_time_covers_only_part_of_its_run(tmp_path):
    """A row resumed from a checkpoint that kept no time (``timed_from_iteration``) prints which
    iterations its wall time and throughput cover; a fully timed row prints its time alone."""
    res = tmp_path / "results"
    res.mkdir()
    base = {"iterations": 3600, "converged": True, "device": "cpu", "miss_rate": {"all": 50.0, "day": 50.0, "night": 50.0}}
    rows = [{**base, "arm": "pdf_none", "seed": 0, "wall_seconds": 2785.0, "images_per_second": 6.3},
            {**base, "arm": "pdf_distil_wt", "seed": 0, "wall_seconds": 730.1, "images_per_second": 13.36,
             "timed_from_iteration": 1500}]
    (res / "evidence_hand_seed0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = subprocess.run([sys.executable, str(REPO / "bench" / "evidence.py"), "summarize", "--tag", "hand"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MS_PERCEPTION_EVIDENCE_RESULTS": str(res)})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = {ln.split(" | ")[0]: ln for ln in out.stdout.splitlines() if ln.startswith("| pdf_")}
    assert "| 730.1 (iterations 1500–3600 only) | 13.36 |" in lines["| pdf_distil_wt"]
    assert "| 2785.0 | 6.3 |" in lines["| pdf_none"]
