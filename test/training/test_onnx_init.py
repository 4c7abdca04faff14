"""Fine-tuning from an ONNX export (``fit.init_checkpoint: MODEL.onnx``, checkpoints.py::
state_from_onnx), e.g. the embedded default model, whose checkpoint is not shipped. The export
folded each BatchNorm into its convolution (w' = w·γ/sqrt(σ²+ε), b' = (b−μ)·γ/sqrt(σ²+ε)+β) and
the thermal repeat into the first convolution; the weights read back must compute what the
export computes."""
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from ms_perception_training.checkpoints import load_weights, state_from_onnx
from ms_perception_training.cli import main
from ms_perception_training.export.onnx_export import export_onnx
from ms_perception_training.models.build import build_model
from ms_perception_training.models.config import load_model_config
from torch import nn

from ms_perception.core.card import read_card

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "config/models/tiny"


def _spoil_bn(model, seed):
    """Running statistics and affine parameters far from the identity, so that folding moves every value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)


def _run(path, feeds):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {o.name: v for o, v in zip(s.get_outputs(), s.run(None, {k: v for k, v in feeds.items()
                                                                     if k in {i.name for i in s.get_inputs()}}))}


@pytest.mark.parametrize("name", ["gaff_three_branch_r18_retinanet", "md_paper_student_r18_retinanet"])
def test_weights_read_from_an_export_compute_what_the_export_computes(tmp_path, name):
    mcfg = load_model_config(TINY / f"{name}.yaml")
    torch.manual_seed(0)
    src = build_model(mcfg).eval()
    _spoil_bn(src, 1)
    export_onnx(src, tmp_path / "a.onnx")
    dst = build_model(mcfg)
    load_weights(dst, tmp_path / "a.onnx")
    dst.eval()
    export_onnx(dst, tmp_path / "b.onnx")
    g = np.random.default_rng(2)
    th, tw = mcfg.input.thermal_hw
    feeds = {"visible": g.integers(0, 256, (1, 3, 96, 128)).astype(np.uint8),
             "thermal": g.integers(0, 256, (1, 1, th, tw)).astype(np.uint8)}
    a, b = _run(tmp_path / "a.onnx", feeds), _run(tmp_path / "b.onnx", feeds)
    assert a.keys() == b.keys()
    for k in a:
        assert np.abs(a[k] - b[k]).max() < 1e-4, k
    # and the torch model itself (unfolded: BatchNorm and the 3-channel thermal repeat back) in eval mode
    v = (torch.from_numpy(feeds["visible"]).float() / 255 - torch.tensor(mcfg.input.visible_mean).view(1, 3, 1, 1)) \
        / torch.tensor(mcfg.input.visible_std).view(1, 3, 1, 1)
    t = (torch.from_numpy(feeds["thermal"]).float() / 255 - mcfg.input.thermal_mean) / mcfg.input.thermal_std
    with torch.no_grad():
        o_src, o_dst = src(v, t), dst(v, t)
    for x, y in zip(o_src.main.cls_logits, o_dst.main.cls_logits):
        assert torch.allclose(x, y, atol=1e-4)


def test_the_folded_values_by_the_formula_and_the_pruned_box_branches(tmp_path):
    mcfg = load_model_config(TINY / "gaff_three_branch_r18_retinanet.yaml")
    torch.manual_seed(0)
    src = build_model(mcfg).eval()
    _spoil_bn(src, 3)
    export_onnx(src, tmp_path / "a.onnx")
    dst = build_model(mcfg)
    state = state_from_onnx(dst, tmp_path / "a.onnx")
    bn, w = src.encoder.backbone_v.bn1, src.encoder.backbone_v.conv1.weight
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    k = "encoder.backbone_v."
    assert torch.allclose(state[k + "conv1.weight"], w * scale.view(-1, 1, 1, 1), atol=1e-6)
    assert torch.allclose(state[k + "bn1.bias"], bn.bias - bn.running_mean * scale, atol=1e-6)
    assert torch.equal(state[k + "bn1.weight"], torch.ones(bn.num_features))
    assert torch.equal(state[k + "bn1.running_mean"], torch.zeros(bn.num_features))
    assert torch.allclose(state[k + "bn1.running_var"] + bn.eps, torch.ones(bn.num_features))
    # thermal: three input channels of a third each of the folded kernel (the sum of the three)
    wt = src.encoder.backbone_t.conv1.weight
    st = src.encoder.backbone_t.bn1
    summed = wt.sum(1, keepdim=True) * (st.weight / torch.sqrt(st.running_var + st.eps)).view(-1, 1, 1, 1)
    assert torch.allclose(state["encoder.backbone_t.conv1.weight"], (summed / 3).repeat(1, 3, 1, 1), atol=1e-6)
    # the mono heads' box branches are not in the graph (their boxes are not output): the main head's
    assert len(dst.onnx_init_filled) == 12
    assert torch.equal(state["heads.visible.head.bbox_pred.weight"], state["heads.fused.head.bbox_pred.weight"])
    assert not torch.equal(state["heads.visible.head.cls_logits.weight"], state["heads.fused.head.cls_logits.weight"])


def test_an_export_of_another_config_is_refused_in_one_line(tmp_path):
    src = build_model(load_model_config(TINY / "gaff_three_branch_r18_retinanet.yaml")).eval()
    export_onnx(src, tmp_path / "a.onnx")
    other = build_model(load_model_config(TINY / "md_paper_student_r18_retinanet.yaml"))
    with pytest.raises(RuntimeError, match="another model config") as e:
        load_weights(other, tmp_path / "a.onnx")
    assert "\n" not in str(e.value)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match="not a readable ONNX model"):
        load_weights(other, tmp_path / "junk.onnx")


def _experiment(path, init, **fit):
    path.write_text(yaml.safe_dump({
        "model": str(TINY / "gaff_three_branch_r18_retinanet.yaml"),
        "data": {"pairs": 4, "width": 128, "height": 96, "thermal_factor": 1, "seed": 7},
        "iterations": 3, "batch_size": 2, "warmup_iterations": 1, "checkpoint_every": 100, "tensorboard": False,
        "init_checkpoint": str(init), **fit}))
    return path


def test_fit_from_an_export_needs_frozen_bn_and_records_the_model_as_parent(tmp_path, capsys):
    src = build_model(load_model_config(TINY / "gaff_three_branch_r18_retinanet.yaml")).eval()
    export_onnx(src, tmp_path / "parent.onnx")
    assert main(["fit", "--config", str(_experiment(tmp_path / "a.yaml", tmp_path / "parent.onnx")),
                 "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fit.bn: frozen" in err[0] and not (tmp_path / "a" / "last.pt").exists()
    cfg = _experiment(tmp_path / "b.yaml", tmp_path / "parent.onnx", bn="frozen",
                      eval={"pairs": 4, "seed": 1001, "every": 2})
    assert main(["fit", "--config", str(cfg), "--out", str(tmp_path / "b")]) == 0
    assert "start from the main head's" in capsys.readouterr().out
    # the curve of a fine-tune starts with the parent's own score (iteration 0)
    from ms_perception_training.evaluate import evaluate
    from ms_perception_training.experiment import load_experiment
    from ms_perception_training.fit import read_curve, validation_source
    fcfg, mcfg, _ = load_experiment(cfg)
    parent_model = build_model(mcfg)
    load_weights(parent_model, tmp_path / "parent.onnx")
    want = evaluate(parent_model, mcfg, validation_source(fcfg, mcfg), device="cpu")
    curve = read_curve(tmp_path / "b" / "eval_curve.jsonl")
    assert [r["iteration"] for r in curve] == [0, 2, 3]
    assert curve[0]["miss_rate"] == want["miss_rate"] and curve[0]["map"] == want["map"]
    lin = json.loads((tmp_path / "b" / "lineage.json").read_text())
    parent = read_card(tmp_path / "parent.onnx")
    assert lin["generation"] == 1 and lin["parent"]["model_sha256"] == parent.graph_sha256
    assert lin["parent"]["checkpoint"] == str(tmp_path / "parent.onnx")


def test_keep_best_holds_the_weights_of_the_curves_lowest_miss_rate(tmp_path, monkeypatch):
    """``eval.keep_best``: best.pt holds the weights evaluated at the point of the curve with the
    lowest overall person miss rate, the fine-tune's starting point (iteration 0) included. A tiny
    untrained model misses everything, so the evaluation is scripted here (miss rates 50, 40, 30,
    45, 30 at iterations 0-4) and records the weights it was shown."""
    import ms_perception_training.evaluate as E
    seen, script = [], iter([50.0, 40.0, 30.0, 45.0, 30.0])

    def scripted(model, mcfg, pool, device="cpu"):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"miss_rate": {"all": next(script), "day": 0.0}, "map": float(len(seen)), "ap50": 0.0}

    monkeypatch.setattr(E, "evaluate", scripted)
    src = build_model(load_model_config(TINY / "gaff_three_branch_r18_retinanet.yaml")).eval()
    export_onnx(src, tmp_path / "parent.onnx")
    cfg = _experiment(tmp_path / "c.yaml", tmp_path / "parent.onnx", bn="frozen", iterations=4, lr=0.05,
                      eval={"pairs": 4, "seed": 1001, "every": 1, "keep_best": True})
    assert main(["fit", "--config", str(cfg), "--out", str(tmp_path / "c")]) == 0
    from ms_perception_training.fit import read_curve
    assert [r["miss_rate"]["all"] for r in read_curve(tmp_path / "c" / "eval_curve.jsonl")] == [50, 40, 30, 45, 30]
    ck = torch.load(tmp_path / "c" / "best.pt", weights_only=False)
    assert ck["iteration"] == 2 and ck["best_eval"]["map"] == 3.0     # the third evaluation, not the tied last
    assert all(torch.equal(ck["model"][k], v) for k, v in seen[2].items())
    moved = [k for k, v in seen[4].items() if v.is_floating_point() and not torch.equal(v, seen[2][k])]
    assert moved                                            # the weights kept are not the last ones
    last = torch.load(tmp_path / "c" / "last.pt", weights_only=False)
    assert all(torch.equal(last["model"][k], v) for k, v in seen[4].items())


def test_best_keeper_takes_the_lowest_finite_miss_rate_and_resumes_from_the_curve(tmp_path):
    from ms_perception_training.fit import BestKeeper

    def point(it, mr):
        return {"iteration": it, "miss_rate": {"all": mr}, "map": 0.0}

    k = BestKeeper(tmp_path, True, 0)
    kept = []
    for r in [point(0, 40.0), point(5, float("nan")), point(10, 35.5), point(15, 35.5), point(20, 38.0),
              point(25, 30.25)]:
        if k.improves(r):
            k.kept(r)
            kept.append(r["iteration"])
    assert kept == [0, 10, 25]                              # NaN never, a tie keeps the earlier
    assert not BestKeeper(tmp_path, False, 0).improves(point(0, 1.0))   # off: never
    # resumed at iteration 15: the best of the curve up to 15 (the curve may run past the checkpoint)
    (tmp_path / "eval_curve.jsonl").write_text("".join(
        json.dumps(point(i, m)) + "\n" for i, m in [(0, 40.0), (10, 35.5), (15, 37.0), (20, 12.0)]))
    (tmp_path / "best.pt").write_bytes(b"x")
    r = BestKeeper(tmp_path, True, 15)
    assert r.record["iteration"] == 10 and not r.improves(point(20, 36.0)) and r.improves(point(20, 12.0))


def test_average_is_the_convex_combination_of_the_checkpoints(tmp_path, capsys):
    """``train average``: float tensors are sum_i w_i theta_i (WiSE-FT's (1 - a) theta_0 + a theta_1), by
    hand: 0.25 * 2 + 0.75 * 6 = 5; integer buffers (BatchNorm's batch counters) are the first one's;
    the lineage is the first one's; bad weights and another config are refused in one line."""
    a = {"conv.weight": torch.full((2, 2), 2.0), "bn.num_batches_tracked": torch.tensor(7)}
    b = {"conv.weight": torch.full((2, 2), 6.0), "bn.num_batches_tracked": torch.tensor(9)}
    torch.save({"model": a, "lineage": "{\"parent\": \"a\"}"}, tmp_path / "a.pt")
    torch.save({"model": b}, tmp_path / "b.pt")
    out = tmp_path / "avg" / "soup.pt"
    assert main(["average", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--weights", "0.25", "0.75",
                 "--out", str(out)]) == 0
    ck = torch.load(out, weights_only=True)
    assert torch.equal(ck["model"]["conv.weight"], torch.full((2, 2), 5.0))
    assert int(ck["model"]["bn.num_batches_tracked"]) == 7 and ck["lineage"] == "{\"parent\": \"a\"}"
    assert ck["average_weights"] == [0.25, 0.75]
    assert main(["average", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--out", str(tmp_path / "eq.pt")]) == 0
    assert torch.equal(torch.load(tmp_path / "eq.pt", weights_only=True)["model"]["conv.weight"], torch.full((2, 2), 4.0))
    capsys.readouterr()
    assert main(["average", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--weights", "0.5", "0.6",
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "sum to 1" in capsys.readouterr().err
    torch.save({"model": {"conv.weight": torch.zeros(3, 2), "bn.num_batches_tracked": torch.tensor(1)}}, tmp_path / "c.pt")
    assert main(["average", str(tmp_path / "a.pt"), str(tmp_path / "c.pt"), "--out", str(tmp_path / "y.pt")]) == 2
    err = capsys.readouterr().err
    assert "conv.weight is (3, 2)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()


def test_an_average_of_a_model_with_itself_loads_back_as_the_model(tmp_path):
    """The averaged checkpoint of a real model config loads into that config; the model averaged with
    itself is the model, tensor for tensor (BatchNorm statistics included)."""
    cfg = load_model_config(TINY / "gaff_r18_retinanet.yaml")
    model = build_model(cfg)
    _spoil_bn(model, 3)
    torch.save({"model": model.state_dict()}, tmp_path / "m.pt")
    assert main(["average", str(tmp_path / "m.pt"), str(tmp_path / "m.pt"), "--out", str(tmp_path / "soup.pt")]) == 0
    again = build_model(cfg)
    load_weights(again, tmp_path / "soup.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
