"""ONNX export: parity with PyTorch for every preset, the card, TensorRT operator check, CLI."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ms_perception_training.export.onnx_export import export_onnx, supported_ops, unsupported_ops
from ms_perception_training.models.config import load_model_config
from ms_perception_training.models.build import build_model

from ms_perception.core.anchors import BoxCoder, grid_anchors
from ms_perception.core.card import CARD_KEY, read_card

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted(p.stem for p in (REPO / "config/models/tiny").glob("*.yaml"))
SCORE_TOL, BOX_TOL_PX = 1e-4, 1e-2  # stated parity tolerances (float32, random weights)


def _model(name, seed=0):
    torch.manual_seed(seed)
    cfg = load_model_config(REPO / "config/models/tiny" / f"{name}.yaml")
    model = build_model(cfg)
    for m in model.modules():  # non-trivial BN statistics so folding is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.8, 1.2)
    return cfg, model.eval()


@pytest.mark.parametrize("name", PRESETS)
def test_export_parity_and_card(name, tmp_path):
    cfg, model = _model(name)
    res = export_onnx(model, tmp_path / "m.onnx")
    assert res.unsupported_ops == []
    for out, diff in res.parity_max_abs.items():
        tol = BOX_TOL_PX if out in ("boxes", "deltas") else SCORE_TOL
        assert diff < tol, (out, diff)
    card = read_card(tmp_path / "m.onnx")
    assert card.name == cfg.name and card.task == cfg.task and card.class_names == cfg.class_names
    assert card.visible_hw == (cfg.input.height, cfg.input.width)
    assert card.uses_thermal == cfg.uses_thermal
    if cfg.uses_thermal:
        h, w = card.thermal_hw
        assert h * w * cfg.input.thermal_factor == cfg.input.height * cfg.input.width
    names = [o.name for o in card.outputs]
    if cfg.fusion.three_branch or cfg.fusion.scheme in ("decision", "cfl"):
        stem = "probs" if cfg.task == "segmentation" else "scores"
        assert {f"{stem}_visible", f"{stem}_thermal"} <= set(names)
    if cfg.task == "detection":
        assert names[:2] == ["scores", "boxes"]
        assert sum(lv.num_anchors * h * w for lv, (h, w) in zip(card.anchor_levels, card.level_sizes)) == \
            card.output("scores").shape[1]


def test_in_graph_decoding_equals_runtime_decoding(tmp_path):
    import onnxruntime as ort
    cfg, model = _model("gaff_r18_retinanet")
    export_onnx(model, tmp_path / "dec.onnx")
    export_onnx(model, tmp_path / "raw.onnx", decode=False)
    rng = np.random.default_rng(0)
    feeds = {"visible": rng.integers(0, 256, (1, 3, 96, 128), dtype=np.uint8),
             "thermal": rng.integers(0, 256, (1, 1, 96, 128), dtype=np.uint8)}
    boxes = ort.InferenceSession(str(tmp_path / "dec.onnx")).run(["boxes"], feeds)[0]
    deltas = ort.InferenceSession(str(tmp_path / "raw.onnx")).run(["deltas"], feeds)[0]
    card = read_card(tmp_path / "raw.onnx")
    assert card.box_decoding == "anchors"
    anchors = grid_anchors(card.anchor_levels, [tuple(s) for s in card.level_sizes])
    np.testing.assert_allclose(BoxCoder(tuple(card.box_coder_weights)).decode(anchors, deltas[0]), boxes[0],
                               atol=1e-2)


def test_uint8_graph_normalizes_like_float_graph(tmp_path):
    import onnxruntime as ort
    cfg, model = _model("md_student_r18_pspnet")  # segmentation: outputs depend strongly on the input
    export_onnx(model, tmp_path / "u8.onnx")
    export_onnx(model, tmp_path / "f32.onnx", uint8_input=False)
    rng = np.random.default_rng(1)
    v = rng.integers(0, 256, (1, 3, 96, 128), dtype=np.uint8)
    # (the tiny MFNet presets are 128x96 as well)
    t = rng.integers(0, 256, (1, 1, 24, 32), dtype=np.uint8)  # 16x fewer thermal pixels
    mean, std = np.array(cfg.input.visible_mean).reshape(1, 3, 1, 1), np.array(cfg.input.visible_std).reshape(1, 3, 1, 1)
    vf = ((v / 255.0 - mean) / std).astype(np.float32)
    tf = ((t / 255.0 - cfg.input.thermal_mean) / cfg.input.thermal_std).astype(np.float32)
    a = ort.InferenceSession(str(tmp_path / "u8.onnx")).run(["probs"], {"visible": v, "thermal": t})[0]
    b = ort.InferenceSession(str(tmp_path / "f32.onnx")).run(["probs"], {"visible": vf, "thermal": tf})[0]
    np.testing.assert_allclose(a, b, atol=1e-4)  # float64 vs in-graph float32 normalization
    # and the comparison is sensitive: forgetting the std division changes the output
    c = ort.InferenceSession(str(tmp_path / "f32.onnx")).run(["probs"], {"visible": vf * std.astype(np.float32),
                                                                        "thermal": tf})[0]
    assert np.abs(a - c).max() > 10 * 1e-4  # well above the tolerance used above
    assert read_card(tmp_path / "f32.onnx").visible_norm.in_graph is False


def test_dynamic_batch(tmp_path):
    import onnxruntime as ort
    _, model = _model("rgb_only_student_r18_retinanet")
    export_onnx(model, tmp_path / "d.onnx", dynamic_batch=True, check_parity=False)
    sess = ort.InferenceSession(str(tmp_path / "d.onnx"))
    out = sess.run(["scores"], {"visible": np.zeros((3, 3, 96, 128), np.uint8)})[0]
    assert out.shape[0] == 3


def test_tensorrt_op_check_flags_unsupported_ops():
    import onnx
    from onnx import helper
    ops = supported_ops()
    assert {"Conv", "Resize", "Sigmoid", "Softmax", "MatMul", "Cast"} <= ops and "Unique" not in ops
    g = helper.make_graph([helper.make_node("Unique", ["x"], ["y"]), helper.make_node("Relu", ["y"], ["z"])], "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3])],
                          [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [3])])
    assert unsupported_ops(helper.make_model(g)) == ["Unique"]


def test_card_is_readable_without_torch(tmp_path):
    _, model = _model("gaff_three_branch_r18_retinanet")
    export_onnx(model, tmp_path / "m.onnx", check_parity=False)
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'ms_perception_training'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
from ms_perception.core.card import read_card
import onnxruntime as ort, numpy as np
c = read_card({str(tmp_path / 'm.onnx')!r})
s = ort.InferenceSession({str(tmp_path / 'm.onnx')!r})
feeds = {{i.name: np.zeros(i.shape, np.uint8) for i in c.inputs}}
outs = s.run([o.name for o in c.outputs], feeds)
assert [list(o.shape) for o in outs] == [o.shape for o in c.outputs]
print(c.branches)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['fused', 'visible', 'thermal']"


def test_cli_export_with_checkpoint(tmp_path, capsys):
    from ms_perception_training.cli import main
    cfg_path = REPO / "config/models/tiny/psfuse_vgg16_fssd.yaml"
    _, model = _model("psfuse_vgg16_fssd")
    torch.save({"model": model.state_dict()}, tmp_path / "ck.pt")
    assert main(["export", "--config", str(cfg_path), "--checkpoint", str(tmp_path / "ck.pt"),
                 "--out", str(tmp_path / "m.onnx"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["unsupported_tensorrt_ops"] == [] and summary["parity_max_abs"]["scores"] < SCORE_TOL
    side = json.loads((tmp_path / "m.card.json").read_text())
    assert side["graph_sha256"] == read_card(tmp_path / "m.onnx").graph_sha256 and len(side["graph_sha256"]) == 64
    import onnx
    assert CARD_KEY in {p.key for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}


def test_cli_export_rejects_mismatched_checkpoint(tmp_path, capsys):
    from ms_perception_training.cli import main
    _, other = _model("cfr_vgg16_fssd")
    torch.save(other.state_dict(), tmp_path / "ck.pt")
    rc = main(["export", "--config", str(REPO / "config/models/tiny/psfuse_vgg16_fssd.yaml"),
               "--checkpoint", str(tmp_path / "ck.pt"), "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and "does not match the model config" in err and "missing" in err
    assert not (tmp_path / "m.onnx").exists()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    rc = main(["export", "--config", str(REPO / "config/models/tiny/psfuse_vgg16_fssd.yaml"),
               "--checkpoint", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "m.onnx")])
    assert rc == 2 and "not a readable PyTorch checkpoint" in capsys.readouterr().err


def test_runtime_cli_dispatches_train(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ms_perception.cli", "train", "info", "--config",
                        str(REPO / "config/models/tiny/md_student_r18_pspnet.yaml"), "--json", "--latency-runs", "0"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["task"] == "segmentation"
    r = subprocess.run([sys.executable, "-m", "ms_perception.cli", "train", "info", "--config", "nope.yaml"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "config file not found: nope.yaml" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("name", ["gaff_three_branch_r18_conv1x1", "md_student_r18_pspnet", "md_student_r18_retinanet",
                                  "gaff_three_branch_r18_retinanet"])
def test_exported_models_run_end_to_end_in_the_runtime_pipeline(name, tmp_path):
    """Export -> ONNX Runtime engine -> Pipeline on a real-size synthetic pair (visible 640x512 rgb8,
    thermal mono16 at the camera's own resolution): masks come back at the visible size, the
    segmentation inconsistency comes from the per-branch class distributions."""
    from ms_perception.core.frames import Frame, FramePair
    from ms_perception.core.pipeline import Pipeline, PipelineConfig
    from ms_perception.engines import create_engine
    from ms_perception.synth.generator import SynthConfig, SyntheticGenerator

    cfg, model = _model(name)
    export_onnx(model, tmp_path / "m.onnx")
    engine = create_engine("onnxruntime", tmp_path / "m.onnx")
    sp = next(iter(SyntheticGenerator(SynthConfig(width=640, height=512, thermal_factor=cfg.input.thermal_factor,
                                                  misregistration_px=0.0), seed=1).pairs(1)))
    pair = FramePair(Frame(sp.visible, sp.stamp_visible_ns, "rgb8"), Frame(sp.thermal_raw, sp.stamp_thermal_ns, "mono16"))
    res = Pipeline(engine, PipelineConfig(score_threshold=0.0, assume_same_fov=True)).process(pair)
    three = cfg.fusion.three_branch
    if cfg.task == "segmentation":
        assert res.mask is not None and res.mask.shape == (512, 640) and res.mask.dtype == np.uint8
        assert res.mask.max() < len(cfg.class_names)
        # the mask is the argmax of the fused distribution, mapped back through the letterbox
        probs = engine.infer(Pipeline(engine, PipelineConfig(assume_same_fov=True)).preprocess(pair)[0])["probs"][0]
        assert set(np.unique(res.mask)) <= set(np.unique(np.argmax(probs, 0)))
    else:
        assert len(res.detections) > 0   # threshold 0: random weights still give boxes
        b = res.detections.boxes
        assert b[:, [0, 2]].min() >= 0 and b[:, [0, 2]].max() <= 640 and b[:, [1, 3]].max() <= 512
    assert (res.inconsistency is not None) == three
    if three:
        assert 0 <= res.inconsistency.score <= 1


def test_bench_runs_a_visible_only_student(tmp_path):
    """`bench` with the RGB-only distilled student (no thermal input) used to end in a TypeError."""
    from ms_perception.bench import run_bench
    from ms_perception.demo import DEFAULT_MODEL
    _, model = _model("rgb_only_student_r18_retinanet")
    export_onnx(model, tmp_path / "rgb.onnx", check_parity=False)
    r = run_bench({"teacher": DEFAULT_MODEL, "student": tmp_path / "rgb.onnx"}, size_wh=(320, 256), iterations=2,
                  warmup=1)
    assert r["student"]["thermal_hw"] is None and r["student"]["thermal_camera_hw"] is None
    assert r["student"]["engine_ms"] > 0 and r["student_teacher_ratio"] > 0


def test_export_feeds_the_thermal_image_once(tmp_path):
    """The repeated gray thermal channels are folded into the first conv (bn_fold.fold_thermal_repeat):
    the image-level student's first conv takes 4 channels, not 6, the GAFF teacher's thermal stem 1,
    and parity (checked by export against the unfolded model) holds."""
    import onnx
    for name, first in (("md_paper_student_r18_retinanet", {3: 0, 4: 1, 6: 0}),
                        ("md_paper_gaff_teacher_r18_retinanet", {1: 1, 3: 1})):
        _, model = _model(name)
        res = export_onnx(model, tmp_path / f"{name}.onnx")
        assert max(res.parity_max_abs.values()) < BOX_TOL_PX
        m = onnx.load(str(tmp_path / f"{name}.onnx"))
        stems = [i.dims[1] for i in m.graph.initializer if len(i.dims) == 4 and list(i.dims[2:]) == [7, 7]]
        assert {c: stems.count(c) for c in first} == first, (name, stems)
        assert "Tile" not in {n.op_type for n in m.graph.node}
        unfolded = export_onnx(model, tmp_path / "unfolded.onnx", fold_thermal=False)
        assert max(unfolded.parity_max_abs.values()) < BOX_TOL_PX
