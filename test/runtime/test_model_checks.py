"""The model card is checked against the graph at load, and unusable model outputs follow one
policy everywhere (counted, that frame's results dropped, the job goes on).

Cards are edited in a copy of the embedded model's ONNX (the card lives in its metadata, which
the graph hash leaves out). The output doubles wrap the real engine and spoil its outputs on
chosen frames: no real graph can be made to produce NaN on a chosen frame, and the point is
what the pipeline, replay, bench and node do with such outputs."""
import json

import numpy as np
import onnx
import pytest

from ms_perception.bench import run_bench
from ms_perception.build import build_pipeline
from ms_perception.cli import main
from ms_perception.core.card import CARD_KEY, onnx_graph_sha256, read_card
from ms_perception.demo import DEFAULT_MODEL
from ms_perception.engines import EngineError, create_engine

from test_replay_faults import STEP, T, V, _write


def _edited(tmp_path, name="m.onnx", graph_edit=None, **card_changes):
    m = onnx.load(str(DEFAULT_MODEL))
    entry = next(e for e in m.metadata_props if e.key == CARD_KEY)
    card = json.loads(entry.value)
    card.update(card_changes)
    entry.value = json.dumps(card)
    if graph_edit:
        graph_edit(m)
    path = tmp_path / name
    onnx.save(m, str(path))
    return path


def test_graph_hash_is_the_exporters(tmp_path):
    # the runtime's wire-format hash equals onnx's: serialize the model without the card entry
    m = onnx.load(str(DEFAULT_MODEL))
    keep = [(e.key, e.value) for e in m.metadata_props if e.key != CARD_KEY]
    del m.metadata_props[:]
    for k, v in keep:
        e = m.metadata_props.add()
        e.key, e.value = k, v
    import hashlib
    assert onnx_graph_sha256(DEFAULT_MODEL.read_bytes()) == hashlib.sha256(m.SerializeToString()).hexdigest() \
        == read_card(DEFAULT_MODEL).graph_sha256


def test_class_count_task_and_anchor_layout_are_checked_at_load(tmp_path):
    for names in (["person", "car"], ["person", "bicycle", "car", "dog", "cat"]):
        with pytest.raises(EngineError, match=rf"output 'scores' scores 3 classes but the card lists {len(names)}"):
            create_engine("onnxruntime", _edited(tmp_path, class_names=names))
    with pytest.raises(EngineError, match="the card says task 'segmentation' but the graph has no 'probs' output"):
        create_engine("onnxruntime", _edited(tmp_path, task="segmentation"))
    # 9 anchors per cell (3 sizes x 3 ratios) x (320 + 80 + 20 + 6) cells = 3834
    with pytest.raises(EngineError, match=r"level_sizes \[\[16, 20\], \[8, 10\], \[4, 5\], \[2, 3\]\] make 3834 "
                                          r"anchors but the graph outputs 15300"):
        create_engine("onnxruntime", _edited(tmp_path, level_sizes=[[16, 20], [8, 10], [4, 5], [2, 3]]))
    card = read_card(DEFAULT_MODEL).to_dict()
    outs = card["outputs"]
    outs[1] = {**outs[1], "dtype": "float16", "shape": [1, 15300, 5]}
    with pytest.raises(EngineError, match=r"output 'boxes': model shape \[1, 15300, 4\], card \[1, 15300, 5\]; "
                                          r"output 'boxes': model dtype float32, card float16"):
        create_engine("onnxruntime", _edited(tmp_path, outputs=outs))


def test_a_wrong_graph_hash_is_refused_unless_accepted(tmp_path):
    def rename_node(m):   # an edit of the graph after export
        m.graph.node[0].name = m.graph.node[0].name + "_edited"
    path = _edited(tmp_path, graph_edit=rename_node)
    with pytest.raises(EngineError, match="is not the hash of this graph .* accept the edited graph explicitly"):
        create_engine("onnxruntime", path)
    e = create_engine("onnxruntime", path, accept_edited_graph=True)
    assert e.card.graph_sha256 == onnx_graph_sha256(path.read_bytes()) != read_card(DEFAULT_MODEL).graph_sha256
    assert "accepted as asked" in e.warnings[0]
    with pytest.raises(EngineError, match="is not the hash of this graph"):
        create_engine("onnxruntime", _edited(tmp_path, graph_sha256="0" * 64))


class Spoiling:
    """The real engine, with outputs spoiled on the frames ``spoil`` picks (by call number)."""

    def __init__(self, spoil):
        self.inner = create_engine("onnxruntime", DEFAULT_MODEL)
        self.card, self.name, self.warnings = self.inner.card, "spoiling", []
        self.spoil, self.calls = spoil, 0

    def infer(self, feeds):
        out = self.inner.infer(feeds)
        self.calls += 1
        self.spoil(self.calls, out)
        if "output_stats" in out and not getattr(self, "keep_stats", False):
            # the graph computes its output statistics from the outputs it gives: so does the double
            from ms_perception.core.postprocess import output_stats, stats_names
            out["output_stats"] = output_stats(out, stats_names(o.name for o in self.card.outputs))
        return out

    def close(self):
        pass


def _nan_branch(call, out):
    if call % 2 == 0:
        out["scores_thermal"][0, 5, 1] = np.nan


def test_replay_counts_and_drops_frames_with_unusable_outputs_and_writes_strict_json(tmp_path):
    from ms_perception.replay.run import replay_bag
    bag = _write(tmp_path / "bag", 6)
    pipe = build_pipeline({"assume_same_fov": True, "capture_enabled": False}, engine=Spoiling(_nan_branch))
    summary, _ = replay_bag(bag, pipe, V, T)
    assert summary.pairs == 3 and summary.invalid_output_pairs["count"] == 3
    assert [e["stamp_ns"] for e in summary.invalid_output_pairs["examples"]] == [2 * STEP, 4 * STEP, 6 * STEP]
    assert "'scores_thermal' holds 1 NaN/inf" in summary.invalid_output_pairs["examples"][0]["reason"]
    assert all(np.isfinite([summary.inconsistency[k] for k in ("min", "p50", "max", "mean")]))


@pytest.mark.parametrize("spoil, reason", [
    (lambda c, o: o["scores"].__setitem__((0, 7, 0), 1.7), "outside [0.0, 1.0001]"),
    (lambda c, o: o["boxes"].__setitem__((0, slice(None), 2), -5.0), "x1 < x0"),
])
def test_out_of_range_scores_and_inverted_boxes_are_never_published(spoil, reason):
    from ms_perception.core.frames import Frame, FramePair
    from ms_perception.core.postprocess import ModelOutputError
    from test_replay_faults import _frames
    pipe = build_pipeline({"assume_same_fov": True, "capture_enabled": False, "score_threshold": 0.0},
                          engine=Spoiling(spoil))
    vis, th = _frames(1)
    with pytest.raises(ModelOutputError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        pipe.process(FramePair(vis, Frame(th.data, th.stamp_ns, th.encoding)))


def test_the_pipeline_checks_the_outputs_from_the_graph_s_statistics():
    """The embedded model gives output_stats (graph_edits.add_output_stats); the pipeline reads the
    range from those numbers (a spoiled statistic alone stops the frame) and, when a sum is not
    finite, reads that output itself to name the count; a huge but finite output whose sum only
    overflowed passes, as check_finite lets it."""
    from ms_perception.core.frames import Frame, FramePair
    from ms_perception.core.postprocess import OUTPUT_STATS, ModelOutputError, check_by_stats
    from test_replay_faults import _frames
    card = read_card(DEFAULT_MODEL)
    assert OUTPUT_STATS in [o.name for o in card.outputs]
    vis, th = _frames(1)
    pair = FramePair(vis, Frame(th.data, th.stamp_ns, th.encoding))

    def spoil_stat(c, o):      # scores' max (row 0, column 2) out of range; the scores themselves are fine
        o[OUTPUT_STATS] = o[OUTPUT_STATS].copy()
        o[OUTPUT_STATS][0, 2] = 1.5
    eng = Spoiling(spoil_stat)
    eng.keep_stats = True
    pipe = build_pipeline({"assume_same_fov": True, "capture_enabled": False}, engine=eng)
    with pytest.raises(ModelOutputError, match=r"'scores' holds values in \[.*, 1.5\]"):
        pipe.process(pair)
    pipe = build_pipeline({"assume_same_fov": True, "capture_enabled": False},
                          engine=Spoiling(lambda c, o: o["boxes"].__setitem__((0, 3, 1), np.inf)))
    with pytest.raises(ModelOutputError, match="'boxes' holds 1 NaN/inf"):
        pipe.process(pair)
    # check_by_stats on its own: hand values
    a = np.array([0.25, 0.5, 1.0], np.float32)
    check_by_stats("p", (1.75, 0.25, 1.0), a, 0.0, 1.0)                  # in range: passes
    with pytest.raises(ModelOutputError, match=r"\[-0.5, 1\]"):
        check_by_stats("p", (1.0, -0.5, 1.0), a, 0.0, 1.0)
    big = np.full(4, 3e38, np.float32)
    check_by_stats("b", (float("inf"), 3e38, 3e38), big)                 # the sum overflowed, every value is finite
    with pytest.raises(ModelOutputError, match="holds 1 NaN/inf"):
        check_by_stats("b", (float("nan"), 0.0, 0.0), np.array([1.0, np.nan], np.float32))


def test_bench_counts_runs_with_nan_outputs_and_goes_on(monkeypatch):
    # (a visible-only student in the bench: test/training/test_export.py, which can export one)
    import ms_perception.bench as b
    monkeypatch.setattr(b, "create_engine", lambda *a, **k: Spoiling(lambda c, o: o["scores"].__setitem__(
        (0, 0, 0), np.nan) if c % 3 == 0 else None))
    r = run_bench({"teacher": DEFAULT_MODEL, "student": DEFAULT_MODEL}, size_wh=(320, 256), iterations=5, warmup=1)
    # 6 interleaved calls, then 6 with each model alone: calls 3, 6, 9 and 12 of 12 are spoiled
    assert r["teacher"]["invalid_output_runs"] == r["student"]["invalid_output_runs"] == 4
    assert len(r["alone"]) == 2 and r["alone"]["teacher"]["engine_ms"] > 0
    assert r["teacher"]["engine_ms"] > 0 and r["student"]["engine_ms"] > 0


def test_cli_replay_with_an_edited_graph_needs_the_explicit_option(tmp_path, capsys):
    path = _edited(tmp_path, graph_edit=lambda m: setattr(m.graph.node[0], "name", "edited"))
    bag = _write(tmp_path / "bag", 2)
    assert main(["replay", str(bag), "--assume-same-fov", "--model", str(path)]) == 2
    assert "accept the edited graph explicitly" in capsys.readouterr().err
    assert main(["replay", str(bag), "--assume-same-fov", "--model", str(path), "--accept-edited-graph"]) == 0
    io = capsys.readouterr()
    assert "warning:" in io.err and "accepted as asked" in io.err
