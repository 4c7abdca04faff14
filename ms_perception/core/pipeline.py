"""The runtime pipeline: FramePair -> preprocess -> engine -> postprocess -> inconsistency -> capture.

Used unchanged by replay and by the ROS node. Torch-free.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from ms_perception.core.anchors import BoxCoder, grid_anchors
from ms_perception.core.capture import AUTO, CapturePolicy, CaptureRecord, CaptureWriter
from ms_perception.core.frames import FramePair
from ms_perception.core.inconsistency import (
    INCONSISTENCY_OUTPUT,
    InconsistencyScore,
    detection_entropy,
    detection_inconsistency,
    detections_entropy,
    detections_inconsistency,
    inconsistency_from_level_class,
    segmentation_entropy,
    segmentation_inconsistency,
)
from ms_perception.core.postprocess import (
    NMS_INPUTS,
    NMS_OUTPUT,
    OUTPUT_STATS,
    Detections,
    ModelOutputError,
    check_boxes,
    check_by_stats,
    detections_from_index,
    select_detections,
    stats_names,
)
from ms_perception.core.preprocess import (
    InputError,
    Letterbox,
    SaturationMonitor,
    ThermalNormalization,
    check_thermal,
    chw_u8,
    load_calibration,
    thermal_input,
    visible_to_rgb,
)


PROB_MAX = 1.0 + 1e-4   # probabilities may exceed 1 by rounding (softmax in FP16), not by more


@dataclass
class PipelineConfig:
    score_threshold: float = 0.3
    nms_iou: float = 0.5
    max_detections: int = 100
    thermal: ThermalNormalization = field(default_factory=ThermalNormalization)
    calibration: str | None = None        # YAML with the thermal->visible homography
    assume_same_fov: bool = False         # thermal differs only in resolution (co-boresighted cameras)
    inconsistency: bool = True            # compute the score when the model has mono branches
    branch_detections: bool = False       # also select each mono branch's own detections (overlays; costs an NMS each)
    # OpenCV's thread pool for the per-frame resizes (process-wide, set when the pipeline is made): 1 = none.
    # Waking the pool for a 640x512 shrink costs more than it saves (0.08 ms of 0.7 per frame on the 2-core
    # bench machine, three alternations) and takes cores from the engine; None leaves OpenCV's own setting.
    opencv_threads: int | None = 1

    def __post_init__(self):
        if not 0 <= self.score_threshold <= 1:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if not 0 < self.nms_iou <= 1:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {self.max_detections}")
        if self.opencv_threads is not None and self.opencv_threads < 0:
            raise ValueError(f"opencv_threads must be >= 0 (0: OpenCV's default) or None, got {self.opencv_threads}")


@dataclass
class Result:
    stamp_ns: int
    detections: Detections
    mask: np.ndarray | None = None                    # (H, W) uint8 class ids at the visible size
    inconsistency: InconsistencyScore | None = None
    timings_ms: dict = field(default_factory=dict)    # preprocess, infer, postprocess, inconsistency, capture
    captured: bool = False
    capture_reason: str = ""
    branch_scores: dict = field(default_factory=dict)  # branch -> (N,) score of each detection's class/anchor
    branch_detections: dict = field(default_factory=dict)  # branch -> Detections from its own scores (config flag)
    frame_scores: dict = field(default_factory=dict)  # per-frame scores a capture policy can rank by (CAPTURE_SCORES)


class Pipeline:
    def __init__(self, engine, config: PipelineConfig | None = None, capture_policy: CapturePolicy | None = None,
                 capture_writer: CaptureWriter | None = None):
        self.engine, self.card = engine, engine.card
        self.cfg = config or PipelineConfig()
        if self.cfg.opencv_threads is not None:
            cv2.setNumThreads(self.cfg.opencv_threads)
        self.policy, self.writer = capture_policy, capture_writer
        self.saturation = SaturationMonitor()   # thermal input clipped at one end of the window
        self.warnings: list[str] = []           # once-only warnings (the caller logs and reports them)
        self.homography = load_calibration(self.cfg.calibration) if self.cfg.calibration else None
        self.model_hw = self.card.visible_hw
        self.thermal_hw = self.card.thermal_hw
        self.level_counts = [lv.num_anchors * h * w for lv, (h, w) in zip(self.card.anchor_levels, self.card.level_sizes)]
        # per-modality branch outputs (three-branch / decision models); a visible-only model has none
        outs = {o.name for o in self.card.outputs}
        self.mono = [b for b in ("visible", "thermal") if {f"scores_{b}", f"probs_{b}"} & outs]
        # the outputs the graph's output_stats rows describe, in order (graph_edits.add_output_stats)
        self._stat_names = stats_names(o.name for o in self.card.outputs) if OUTPUT_STATS in outs else []
        # the graph runs the NMS (graph_edits.add_nms): the runtime feeds its thresholds, reads the survivors
        self.graph_nms = NMS_OUTPUT in outs and all(self.card.input(n) is not None for n in NMS_INPUTS)
        self._nms_key, self._nms_arrays = None, {}
        self._lb_cache: dict = {}
        if self.policy is not None and self.policy.cfg.score not in self.frame_score_names():
            self.warnings.append(f"capture_score {self.policy.cfg.score!r}: model {self.card.name!r} gives no such score "
                                 f"(it gives {self.frame_score_names() or 'none'}); only forced captures are recorded")
        if self.card.task == "detection" and self.card.box_decoding == "anchors":  # the runtime decodes
            self._anchors = grid_anchors(self.card.anchor_levels, [tuple(s) for s in self.card.level_sizes])
            self._coder = BoxCoder(tuple(self.card.box_coder_weights))

    def frame_score_names(self) -> list[str]:
        """The per-frame scores this model gives (what ``Result.frame_scores`` holds)."""
        names = []
        if self.cfg.inconsistency and len(self.mono) == 2:
            names.append("inconsistency")
            if self.card.task == "detection":
                names.append("detection_inconsistency")
        if self.card.task == "detection":
            names.append("detection_entropy")
        return names

    # ------------------------------------------------------------------ helpers
    def _output_stats(self, out: dict) -> dict:
        """{output name: (sum, min, max)} from the graph's ``output_stats`` (graph_edits.add_output_stats),
        or {} (each output is then read by the checks): 3T numbers instead of T arrays after the engine."""
        names = self._stat_names
        if not names:
            return {}
        a = out[OUTPUT_STATS]
        if a.shape != (len(names), 3):
            raise ModelOutputError(f"model output {OUTPUT_STATS!r} is {a.shape}, the card says ({len(names)}, 3); "
                                   "the card does not match the graph (re-export, or run `train graph-edit` on "
                                   "the export)")
        return dict(zip(names, map(tuple, a.tolist())))

    def _letterbox(self, hw) -> Letterbox:
        lb = self._lb_cache.get(hw)
        if lb is None:
            lb = self._lb_cache[hw] = Letterbox.fit(hw, self.model_hw)
        return lb

    def _thermal_to_visible(self, thermal_hw, visible_hw) -> np.ndarray:
        if self.homography is not None:
            return self.homography
        if tuple(thermal_hw) == tuple(visible_hw):
            return np.eye(3)
        if not self.cfg.assume_same_fov:
            raise InputError(f"thermal image is {thermal_hw[1]}x{thermal_hw[0]} but visible is {visible_hw[1]}x"
                             f"{visible_hw[0]} and no calibration was given; set the thermal calibration file "
                             "(thermal->visible homography) or, for co-boresighted cameras, assume_same_fov: true")
        return np.diag([visible_hw[1] / thermal_hw[1], visible_hw[0] / thermal_hw[0], 1.0])

    def _feed(self, unit_or_u8: np.ndarray, norm, is_u8: bool) -> np.ndarray:
        x = unit_or_u8
        if norm.in_graph and is_u8:
            return chw_u8(x)
        if x.ndim == 2:
            x = x[..., None]
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        if norm.in_graph:
            return x if is_u8 else np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        f = x.astype(np.float32) / (255.0 if is_u8 else 1.0)
        mean = np.asarray(norm.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(norm.std, np.float32).reshape(1, -1, 1, 1)
        return (f - mean) / std

    def registered_thermal(self, pair: FramePair) -> np.ndarray | None:
        """The pair's thermal image as the model sees it (same normalization and registration), at
        the visible image's size: 8-bit, for overlays. None without a thermal frame."""
        if pair.thermal is None:
            return None
        hw = visible_to_rgb(pair.visible).shape[:2]
        m = self._thermal_to_visible(check_thermal(pair.thermal).shape[:2], hw)
        return thermal_input(pair.thermal, self.cfg.thermal, m, Letterbox.fit(hw, hw), hw)

    # -------------------------------------------------------------------- run
    def preprocess(self, pair: FramePair) -> tuple[dict, Letterbox, np.ndarray]:
        rgb = visible_to_rgb(pair.visible)
        lb = self._letterbox(rgb.shape[:2])
        feeds = {"visible": self._feed(lb.apply(rgb), self.card.visible_norm, True)}
        if self.card.uses_thermal:
            if pair.thermal is None:
                raise InputError("this model needs a thermal image but the pair has none; check the thermal topic, "
                                 "or run a visible-only model while the thermal camera is down")
            m = self._thermal_to_visible(check_thermal(pair.thermal).shape[:2], rgb.shape[:2])
            x = thermal_input(pair.thermal, self.cfg.thermal, m, lb, self.thermal_hw)
            warning = self.saturation.update(pair.thermal, None, self.cfg.thermal)
            if warning:
                self.warnings.append(warning)
            feeds["thermal"] = self._feed(x, self.card.thermal_norm, True)
        if self.graph_nms:   # read from the config each frame: a parameter change applies to the next frame
            feeds.update(self._nms_feeds())
        return feeds, lb, rgb

    def _nms_feeds(self) -> dict:
        """The graph NMS's three inputs from the config, rebuilt only when a value changed."""
        cfg = self.cfg
        key = (cfg.score_threshold, cfg.nms_iou, cfg.max_detections)
        if self._nms_key != key:
            self._nms_key = key
            self._nms_arrays = {"score_threshold": np.array([cfg.score_threshold], np.float32),
                                "nms_iou": np.array([cfg.nms_iou], np.float32),
                                "max_detections": np.array([cfg.max_detections], np.int64)}
        return self._nms_arrays

    def process(self, pair: FramePair) -> Result:
        t0 = time.perf_counter()
        feeds, lb, rgb = self.preprocess(pair)
        t1 = time.perf_counter()
        out = self.engine.infer(feeds)
        t2 = time.perf_counter()
        res = Result(pair.stamp_ns, Detections())
        card = self.card
        # one policy for every caller: a non-finite or out-of-range output raises ModelOutputError before
        # anything of this frame is published or captured; the caller counts the frame and goes on
        st = self._output_stats(out)
        if card.task == "detection":
            for name in ("scores", *(f"scores_{b}" for b in self.mono)):
                check_by_stats(name, st.get(name), out[name][0], 0.0, PROB_MAX)
            scores = out["scores"][0]
            if "boxes" in out:
                check_by_stats("boxes", st.get("boxes"), out["boxes"][0])
                boxes = out["boxes"][0]
            else:
                check_by_stats("deltas", st.get("deltas"), out["deltas"][0])
                boxes = self._coder.decode(self._anchors, out["deltas"][0])
            if self.graph_nms:
                det = detections_from_index(out[NMS_OUTPUT], scores, boxes, self.cfg.max_detections)
            else:
                det = select_detections(scores, boxes, self.cfg.score_threshold, self.cfg.nms_iou,
                                        self.cfg.max_detections, checked=True)
            check_boxes(det.boxes)
            det.boxes = lb.boxes_to_image(det.boxes)
            res.detections = det
            for b in self.mono:
                res.branch_scores[b] = out[f"scores_{b}"][0][det.anchor_index, det.labels]
                if self.cfg.branch_detections:   # the mono heads' scores over the fused boxes (the only ones exported)
                    bd = select_detections(out[f"scores_{b}"][0], boxes, self.cfg.score_threshold, self.cfg.nms_iou,
                                           self.cfg.max_detections, checked=True)
                    bd.boxes = lb.boxes_to_image(bd.boxes)
                    res.branch_detections[b] = bd
        else:
            for name in ("probs", *(f"probs_{b}" for b in self.mono)):
                check_by_stats(name, st.get(name), out[name][0], 0.0, PROB_MAX)
            probs = out["probs"][0]
            res.mask = lb.mask_to_image(np.argmax(probs, 0).astype(np.uint8))
        t3 = time.perf_counter()
        if self.cfg.inconsistency and len(self.mono) == 2:
            if card.task == "detection" and INCONSISTENCY_OUTPUT in out:   # the graph computed the level means
                level_class = out[INCONSISTENCY_OUTPUT][0]
                check_by_stats(INCONSISTENCY_OUTPUT, st.get(INCONSISTENCY_OUTPUT), level_class, 0.0, PROB_MAX)
                res.inconsistency = inconsistency_from_level_class(level_class)
            elif card.task == "detection":
                res.inconsistency = detection_inconsistency(out["scores_visible"][0], out["scores_thermal"][0],
                                                            self.level_counts)
            else:
                res.inconsistency = segmentation_inconsistency(out["probs_visible"][0], out["probs_thermal"][0])
        fs = res.frame_scores
        if res.inconsistency is not None:
            fs["inconsistency"] = res.inconsistency.score
        if card.task == "detection":
            if self.cfg.inconsistency and len(self.mono) == 2:
                fs["detection_inconsistency"] = detections_inconsistency(res.branch_scores["visible"],
                                                                         res.branch_scores["thermal"])
            fs["detection_entropy"] = detections_entropy(res.detections.scores)
        t4 = time.perf_counter()
        # without a score only an operator override (pause / force) decides
        score = None if self.policy is None else fs.get(self.policy.cfg.score)
        if self.policy is not None and (score is not None or self.policy.mode != AUTO):
            res.captured, res.capture_reason = self.policy.decide(pair.stamp_ns, score, rgb)
            if res.captured and self.writer is not None:
                self.writer.submit(self._record(pair, rgb, res, out))
        t5 = time.perf_counter()
        res.timings_ms = {"preprocess": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "postprocess": (t3 - t2) * 1e3,
                          "inconsistency": (t4 - t3) * 1e3, "capture": (t5 - t4) * 1e3}
        return res

    def _record(self, pair: FramePair, rgb: np.ndarray, res: Result, out: dict) -> CaptureRecord:
        """What a labeling round needs later: every branch's predictions, the image scores of both
        selection strategies (inconsistency, fused-branch entropy), the classes and the registration.
        The predictions are assembled on the writer's thread (``predictions``: a function): the
        per-anchor entropy and the lists are not this frame's work."""
        inc, seg = res.inconsistency, self.card.task != "detection"
        fused = out["probs" if seg else "scores"][0] if ("probs" if seg else "scores") in out else None
        det, branch_scores, reason = res.detections, dict(res.branch_scores), res.capture_reason
        frame_scores, capture_score = dict(res.frame_scores), self.policy.cfg.score if self.policy is not None else None
        class_names, counts = list(self.card.class_names), self.level_counts

        def predictions() -> dict:
            if fused is None:
                entropy = None
            else:
                entropy = segmentation_entropy(fused) if seg else detection_entropy(fused, counts)
            return {"detections": det.to_list(class_names),
                    "branch_scores": {k: [round(float(x), 5) for x in v] for k, v in branch_scores.items()},
                    "inconsistency": None if inc is None else {"score": inc.score, "per_level": inc.per_level,
                                                               "per_class": inc.per_class},
                    "frame_scores": frame_scores, "capture_score": capture_score,
                    "entropy": entropy, "capture_reason": reason}
        th = pair.thermal
        extra = {"model": self.card.name, "visible_frame_id": pair.visible.frame_id, "task": self.card.task,
                 "class_names": list(self.card.class_names)}
        if th is not None and self.card.uses_thermal:
            m = self._thermal_to_visible(np.asarray(th.data).shape[:2], rgb.shape[:2])
            extra["homography_thermal_to_visible"] = [[float(v) for v in row] for row in np.asarray(m)]
        return CaptureRecord(pair.stamp_ns, float("nan") if inc is None else inc.score, rgb, None if th is None else np.asarray(th.data),
                             "" if th is None else th.encoding, None if th is None else th.stamp_ns, predictions, extra,
                             mask=res.mask if seg else None, rank=frame_scores.get(capture_score))
