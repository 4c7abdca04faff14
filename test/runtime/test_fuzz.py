"""Bounded property-based fuzzing (hypothesis, derandomized so CI is reproducible): the bag
reader, the evaluation readers and the node logic either do their job or refuse with their own
named error; no other exception ever escapes, whatever the input."""
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ms_perception.formats.errors import FormatError
from ms_perception.formats.kaist import load_detections_txt, load_kaist_json
from ms_perception.formats.validate import check_coco_gt, check_coco_results
from ms_perception.replay.bag import IMAGE, BagError, ReadReport, _typestore, frame_from_msg, read_frames

# CI: 60 derandomized examples per property; FUZZ_EXAMPLES=N explores N random ones
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 60)), deadline=None,
                derandomize="FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ENCODINGS = st.sampled_from(["rgb8", "bgr8", "mono8", "mono16", "16UC1", "32FC1", "rgba8", "yuv422", "", "8UC3"])


@st.composite
def image_fields(draw):
    h, w = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    step = draw(st.integers(0, 40))
    data = draw(st.binary(max_size=200))
    return dict(height=h, width=w, step=step, encoding=draw(ENCODINGS), is_bigendian=draw(st.integers(0, 1)),
                data=np.frombuffer(data, np.uint8))


def _image(ts, f, stamp=1):
    H, T = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    return ts.types[IMAGE](header=H(stamp=T(sec=stamp, nanosec=0), frame_id="f"), **f)


@FUZZ
@given(image_fields())
def test_image_messages_decode_or_are_refused_by_name(f):
    ts = _typestore()
    try:
        frame = frame_from_msg(_image(ts, f))
    except BagError as exc:
        assert str(exc)
        return
    assert frame.data.shape[:2] == (f["height"], f["width"]) and frame.data.size > 0


@pytest.fixture(scope="module")
def small_mcap(tmp_path_factory):
    from test_replay_faults import _write
    bag = _write(tmp_path_factory.mktemp("fz") / "bag", 6, vis_hw=(16, 20))
    return bag, next(bag.glob("*.mcap")).read_bytes()


@FUZZ
@given(st.data())
def test_damaged_recordings_are_read_partly_or_refused(small_mcap, tmp_path_factory, data):
    bag, raw = small_mcap
    off = data.draw(st.integers(0, len(raw) - 1))
    patch = data.draw(st.binary(min_size=1, max_size=64))
    cut = data.draw(st.booleans())
    spoiled = raw[:off] if cut else raw[:off] + patch + raw[off + len(patch):]
    d = tmp_path_factory.mktemp("spoiled")
    (d / "x.mcap").write_bytes(spoiled)
    rep = ReadReport()
    try:
        frames = list(read_frames(d / "x.mcap", "/camera/visible/image_raw", "/camera/thermal/image_raw", rep))
    except BagError as exc:
        assert str(exc)
        return
    # every message read is either a frame or a counted malformed one; no frame is half-decoded
    assert len(frames) + sum(m["count"] for m in rep.malformed.values()) == sum(rep.messages.values())


@FUZZ
@given(st.text(alphabet="0123456789,.-eEnaif \n", max_size=120))
def test_detection_txt_reads_or_names_the_line(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("t") / "d.txt"
    p.write_text(text)
    try:
        rows = load_detections_txt(p)
    except FormatError as exc:
        assert str(exc).startswith(str(p))
        return
    for v in rows.values():
        assert np.isfinite(v).all() and (v[:, 2:4] >= 0).all()


JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=3),
                       lambda c: st.lists(c, max_size=4) | st.dictionaries(
                           st.sampled_from(["images", "annotations", "categories", "id", "image_id", "bbox", "score",
                                            "category_id", "area", "height"]), c, max_size=5), max_leaves=25)


@FUZZ
@given(JSONISH)
def test_result_and_ground_truth_json_validate_or_name_the_item(tmp_path_factory, doc):
    for check in (check_coco_results, check_coco_gt):
        try:
            check(doc, "f.json")
        except FormatError as exc:
            assert str(exc).startswith("f.json: ")
    p = tmp_path_factory.mktemp("k") / "a.json"
    p.write_text(json.dumps(doc))
    try:
        anns = load_kaist_json(p)
    except FormatError as exc:
        assert str(exc).startswith(str(p))
        return
    assert all(np.isfinite(a.boxes).all() for a in anns)


@pytest.fixture(scope="module")
def logic(tmp_path_factory):
    from ms_perception.ros.definitions import typestore
    from ms_perception.ros.logic import DetectorLogic
    from ms_perception.ros.messages import TypestoreAdapter
    ts = typestore()
    lg = DetectorLogic({"assume_same_fov": True, "capture_enabled": False}, TypestoreAdapter(ts), frame_from_msg)
    lg.configure()
    lg.activate(0)
    return ts, lg


@FUZZ
@given(image_fields(), image_fields())
def test_node_logic_never_raises_on_any_image_pair(logic, fv, ft):
    ts, lg = logic
    before = lg.counters.errors
    out = lg.on_pair(_image(ts, fv), _image(ts, ft), now_ns=10**9)
    assert (out.error != "") == (lg.counters.errors == before + 1)
    assert out.error or "detections" in out.messages
