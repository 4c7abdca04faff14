"""Parameter table, config/detector.yaml and the launch file."""
import ast
from pathlib import Path

import pytest
import yaml

from ms_perception.ros.params import DEFAULTS, PARAMS, check_all, check_value, pipeline_config, render_yaml

REPO = Path(__file__).resolve().parents[2]


def test_detector_yaml_documents_every_parameter_with_its_default():
    text = (REPO / "config" / "detector.yaml").read_text()
    assert text == render_yaml(), "config/detector.yaml is stale: regenerate it with ms_perception.ros.params"
    values = yaml.safe_load(text)["/**"]["ros__parameters"]
    for p in PARAMS:
        assert f"    # {p.description}" in text, p.name
        if p.name in values:
            assert values[p.name] == pytest.approx(p.default) if isinstance(p.default, float) else \
                values[p.name] == p.default
        else:
            assert p.default == [], f"{p.name} is missing from the YAML"   # only empty lists are commented out
    assert check_all(values) == []


@pytest.mark.parametrize("name,value,fragment", [
    ("score_threshold", 1.5, "in [0, 1]"),
    ("score_threshold", "high", "must be a float"),
    ("backend", "pytorch", "must be one of"),
    ("qos_reliability", "sometimes", "best_effort"),
    ("visible_topic", "/camera/visible image", "not a valid ROS topic"),
    ("model_path", "/no/such/model.onnx", "file not found"),
    ("class_names", ["person", "person"], "unique"),
    ("sync_slop_s", 0.0, "(0, 10]"),
    ("capture_enabled", 1, "must be a bool"),
    ("nope", 1, "unknown parameter"),
])
def test_bad_values_are_rejected_with_a_reason(name, value, fragment):
    reason = check_value(name, value)
    assert reason is not None and fragment in reason


def test_cross_parameter_checks_and_mapping():
    assert any("thermal_raw_max" in p for p in check_all({"thermal_raw_min": 30000.0, "thermal_raw_max": 20000.0}))
    assert any("fallback_model_path" in p for p in check_all({"thermal_loss_action": "fallback_model"}))
    cfg = pipeline_config({**DEFAULTS, "score_threshold": 0.6, "thermal_normalization": "percentile"})
    assert cfg.score_threshold == 0.6 and cfg.thermal.mode == "percentile"
    assert check_value("score_threshold", 1) is None     # an int is a valid double


def test_launch_file_declares_the_documented_arguments():
    src = (REPO / "launch" / "detector.launch.py").read_text()
    tree = ast.parse(src)
    args = next(n for n in ast.walk(tree) if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "ARGUMENTS")
    names = [elt.elts[0].value for elt in args.value.elts]
    assert set(names) >= {"namespace", "model", "backend", "config_file", "visible_topic", "thermal_topic",
                          "use_sim_time", "log_level"}
    assert "executable=\"detector_node\"" in src and "generate_launch_description" in src
    overrides = {"model_path", "backend", "visible_topic", "thermal_topic"}
    assert overrides <= set(DEFAULTS) and all(f'"{k}"' in src for k in overrides)
