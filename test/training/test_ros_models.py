"""The detector node's logic with exported models the runtime tests cannot make without torch:
a visible-only fallback model for thermal loss, and a segmentation model (mask outputs)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from ms_perception_training.export.onnx_export import export_onnx
from ms_perception_training.models.config import load_model_config
from ms_perception_training.models.build import build_model

from ms_perception.core.frames import Frame
from ms_perception.replay.bag import frame_from_msg, image_msg
from ms_perception.ros.definitions import typestore
from ms_perception.ros.logic import DetectorLogic
from ms_perception.ros.messages import TypestoreAdapter
from ms_perception.synth.generator import SynthConfig, SyntheticGenerator

REPO = Path(__file__).resolve().parents[2]
S = 10**9


def export(tmp_path, preset: str, extra: str = "") -> Path:
    cfg_file = tmp_path / f"{preset}.yaml"
    cfg_file.write_text(f"base: {REPO / 'config/models/tiny' / preset}.yaml\n{extra}")
    torch.manual_seed(0)
    model = build_model(load_model_config(cfg_file)).eval()
    out = tmp_path / f"{preset}.onnx"
    export_onnx(model, out)
    return out


@pytest.fixture(scope="module")
def ts():
    return typestore()


def pair_msgs(ts, t_ns):
    sp = next(iter(SyntheticGenerator(SynthConfig(width=640, height=512, thermal_factor=4), seed=2).pairs(1)))
    return (image_msg(ts, Frame(sp.visible, t_ns, "rgb8", "visible_optical")),
            image_msg(ts, Frame(sp.thermal_raw, t_ns + 1_000_000, "mono16", "thermal_optical")))


def test_thermal_loss_falls_back_to_the_visible_only_model_and_recovers(ts, tmp_path):
    fallback = export(tmp_path, "rgb_only_student_r18_retinanet", "class_names: [person, bicycle, car]\n")
    logic = DetectorLogic({"assume_same_fov": True, "capture_enabled": False, "thermal_timeout_s": 0.5,
                           "thermal_loss_action": "fallback_model", "fallback_model_path": str(fallback),
                           "score_threshold": 0.0}, TypestoreAdapter(ts), frame_from_msg)
    logic.configure()
    logic.activate(0)
    vis, th = pair_msgs(ts, 1 * S)
    logic.on_thermal(th, 1 * S)
    assert logic.on_visible(vis, int(1.1 * S)) is None          # thermal alive: the pair callback publishes
    out = logic.on_visible(vis, 2 * S)                          # 1 s without thermal: fallback model
    assert logic.thermal_lost and out is not None and out.error == ""
    assert set(out.messages) == {"detections"}                  # no inconsistency without a thermal branch
    det = ts.deserialize_cdr(ts.serialize_cdr(out.messages["detections"], "vision_msgs/msg/Detection2DArray"),
                             "vision_msgs/msg/Detection2DArray")
    assert len(det.detections) > 0 and det.header.frame_id == "visible_optical"
    diag = logic.diagnostics(2 * S)[0]
    assert diag.status[0].level == 1 and "fallback" in diag.status[0].message
    logic.on_thermal(th, int(2.1 * S))
    assert not logic.thermal_lost and logic.on_visible(vis, int(2.2 * S)) is None
    assert logic.counters.fallback_frames == 1


def test_segmentation_model_publishes_class_id_and_colored_masks(ts, tmp_path):
    model = export(tmp_path, "gaff_three_branch_r18_conv1x1")
    logic = DetectorLogic({"model_path": str(model), "assume_same_fov": True, "capture_enabled": False,
                           "publish_colored_mask": True}, TypestoreAdapter(ts), frame_from_msg)
    logic.configure()
    logic.activate(0)
    vis, th = pair_msgs(ts, 1 * S)
    out = logic.on_pair(vis, th, 1 * S)
    assert out.error == "" and {"mask", "colored_mask", "inconsistency"} <= set(out.messages)
    mask = ts.deserialize_cdr(ts.serialize_cdr(out.messages["mask"], "sensor_msgs/msg/Image"), "sensor_msgs/msg/Image")
    assert (mask.encoding, mask.height, mask.width, mask.step) == ("mono8", 512, 640, 640)
    np.testing.assert_array_equal(frame_from_msg(mask).data, out.result.mask)
    col = out.messages["colored_mask"]
    assert (col.encoding, col.step) == ("rgb8", 1920)
    inc = out.messages["inconsistency"]
    assert 0 <= inc.score <= 1 and len(inc.per_level) == 1
