"""Model card: round trip and clear errors, without torch (onnx helper builds the graphs)."""
import json

import onnx
import pytest
from onnx import TensorProto, helper

from ms_perception.core.anchors import AnchorLevel
from ms_perception.core.card import CARD_KEY, CardError, ModelCard, Normalization, TensorSpec, read_card


def _card(**kw) -> ModelCard:
    d = dict(name="m", task="detection", class_names=["person"],
             inputs=[TensorSpec("visible", [1, 3, 8, 8], "uint8"), TensorSpec("thermal", [1, 1, 4, 4], "uint8")],
             outputs=[TensorSpec("scores", [1, 12, 1], "float32")],
             visible_norm=Normalization([0.5] * 3, [0.25] * 3), thermal_norm=Normalization([0.5], [0.25]),
             thermal_factor=4, box_decoding="anchors",
             anchor_levels=[AnchorLevel(4, (8.0,), (1.0, 2.0, 0.5))], level_sizes=[[2, 2]])
    d.update(kw)
    return ModelCard(**d)


def _onnx(path, card_json=None):
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g)
    if card_json is not None:
        e = m.metadata_props.add()
        e.key, e.value = CARD_KEY, card_json
    onnx.save(m, str(path))


def test_round_trip(tmp_path):
    c = _card()
    _onnx(tmp_path / "m.onnx", c.to_json())
    back = read_card(tmp_path / "m.onnx")
    assert back == c
    assert back.visible_hw == (8, 8) and back.thermal_hw == (4, 4) and back.uses_thermal
    assert back.anchor_levels[0].num_anchors == 3
    (tmp_path / "m.json").write_text(c.to_json())
    assert read_card(tmp_path / "m.json") == c


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(CardError, match="model file not found"):
        read_card(tmp_path / "none.onnx")
    _onnx(tmp_path / "bare.onnx")
    with pytest.raises(CardError, match="has no 'ms_perception.card' metadata; export it with"):
        read_card(tmp_path / "bare.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CardError, match="not a readable ONNX model"):
        read_card(tmp_path / "junk.onnx")
    d = _card().to_dict()
    d["version"] = 99
    _onnx(tmp_path / "v.onnx", json.dumps(d))
    with pytest.raises(CardError, match="version 99; this runtime reads version 1"):
        read_card(tmp_path / "v.onnx")
    _onnx(tmp_path / "j.onnx", "{not json")
    with pytest.raises(CardError, match="not valid JSON"):
        read_card(tmp_path / "j.onnx")
    d = _card().to_dict()
    del d["inputs"]
    _onnx(tmp_path / "k.onnx", json.dumps(d))
    with pytest.raises(CardError, match="malformed model card"):
        read_card(tmp_path / "k.onnx")
    (tmp_path / "model.engine").write_bytes(b"x")
    with pytest.raises(CardError, match="no model card sidecar model.engine.card.json"):
        read_card(tmp_path / "model.engine")


def test_validation():
    with pytest.raises(CardError, match="task 'tracking'"):
        _card(task="tracking").validate()
    with pytest.raises(CardError, match="no 'visible' input"):
        _card(inputs=[TensorSpec("thermal", [1, 1, 4, 4], "uint8")]).validate()
    with pytest.raises(CardError, match="needs anchor_levels"):
        _card(anchor_levels=[]).validate()
