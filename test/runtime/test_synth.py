"""The synthetic generator's promised properties."""
import numpy as np
import pytest

from ms_perception.synth.generator import (
    PERSON,
    SynthConfig,
    SyntheticGenerator,
    celsius_to_counts,
    counts_to_celsius,
    thermal_to_8bit,
)


def frames(cfg=None, seed=0, n=10, seq=0, condition=None):
    return list(SyntheticGenerator(cfg or SynthConfig(), seed).sequence(seq, n, condition=condition))


def test_seed_reproduces_and_differs():
    a, b, c = frames(seed=3, n=3), frames(seed=3, n=3), frames(seed=4, n=3)
    for x, y in zip(a, b):
        assert np.array_equal(x.visible, y.visible) and np.array_equal(x.thermal_raw, y.thermal_raw)
        assert [o.box for o in x.objects] == [o.box for o in y.objects]
    assert not np.array_equal(a[0].visible, c[0].visible)


def test_shapes_dtypes_and_thermal_factor():
    for k, lin in ((1, 1), (4, 2), (16, 4), (64, 8)):
        p = frames(SynthConfig(width=320, height=256, thermal_factor=k), n=1)[0]
        assert p.visible.shape == (256, 320, 3) and p.visible.dtype == np.uint8
        assert p.thermal_raw.shape == (256 // lin, 320 // lin) and p.thermal_raw.dtype == np.uint16
        assert p.semantic.shape == (256, 320) and p.instances.shape == (256, 320)
        assert p.homography[0, 0] == pytest.approx(lin, rel=0.02)
    with pytest.raises(ValueError, match="thermal_factor"):
        SynthConfig(thermal_factor=9)
    with pytest.raises(ValueError, match="divisible"):
        SynthConfig(width=324, height=256, thermal_factor=64)


def test_counts_celsius_mapping():
    assert int(celsius_to_counts(0.0)) == 27315
    assert int(celsius_to_counts(36.85)) == 31000
    assert counts_to_celsius(np.array([31000], np.uint16))[0] == pytest.approx(36.85, abs=1e-3)
    t8 = thermal_to_8bit(np.array([[100, 200], [300, 400]], np.uint16))
    assert t8.dtype == np.uint8 and t8.min() == 0 and t8.max() == 255


def test_labels_match_pixels():
    for p in frames(n=5, seq=2):
        for o in p.objects:
            m = p.instances == o.instance_id
            assert m.any()
            assert (p.semantic[m] == o.class_id).all()
            ys, xs = np.nonzero(m)
            x0, y0, x1, y1 = o.box
            # every visible pixel lies inside the (amodal) box
            assert xs.min() >= x0 and xs.max() + 1 <= x1 and ys.min() >= y0 and ys.max() + 1 <= y1
            if o.visible_fraction == 1.0 and x0 > 0 and y0 > 0 and x1 < 320 and y1 < 256:  # tight box
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
            assert o.occlusion == (0 if o.visible_fraction >= 0.8 else 1 if o.visible_fraction >= 0.35 else 2)
        assert (p.semantic[p.instances == 0] == 0).all()


def _visible_contrast(pairs):
    """Mean |object - 3px ring around it| luminance of unoccluded persons."""
    import cv2
    vals = []
    for p in pairs:
        lum = p.visible.astype(np.float32).mean(axis=2)
        for o in p.objects:
            if o.class_id != PERSON or o.occlusion > 0 or o.height_px < 20:
                continue
            m = (p.instances == o.instance_id).astype(np.uint8)
            ring = cv2.dilate(m, np.ones((7, 7), np.uint8)) - m
            ring &= (p.instances == 0)
            if ring.sum() and m.sum():
                vals.append(abs(lum[m > 0].mean() - lum[ring > 0].mean()))
    return float(np.mean(vals))


def test_visible_contrast_collapses_at_night_but_thermal_does_not():
    day = [f for s in range(6) for f in frames(n=2, seq=s, condition="day")]
    night = [f for s in range(6) for f in frames(n=2, seq=s, condition="night")]
    c_day, c_night = _visible_contrast(day), _visible_contrast(night)
    assert c_night < 0.35 * c_day, (c_day, c_night)

    def thermal_contrast(pairs):
        """Median |person - surrounding background| in the rendered thermal image (°C)."""
        import cv2
        vals = []
        for p in pairs:
            t = cv2.warpPerspective(p.thermal_celsius, p.homography, (p.visible.shape[1], p.visible.shape[0]))
            for o in p.objects:
                if o.class_id == PERSON and not o.crossover and o.occlusion == 0 and o.height_px > 30:
                    m = cv2.erode((p.instances == o.instance_id).astype(np.uint8), np.ones((3, 3), np.uint8))
                    ring = cv2.dilate(m, np.ones((9, 9), np.uint8)) - cv2.dilate(m, np.ones((5, 5), np.uint8))
                    ring &= (p.instances == 0)
                    if m.sum() > 20 and ring.sum() > 20:
                        vals.append(abs(np.median(t[m > 0]) - np.median(t[ring > 0])))
        return float(np.median(vals))
    assert thermal_contrast(night) > 5.0  # people stay well above a cool night background


def test_crossover_fraction_matches_setting_and_objects_vanish_in_thermal():
    cfg = SynthConfig(crossover_fraction=0.5, objects_per_frame=(6, 8))
    objs = [o for s in range(30) for o in frames(cfg, n=1, seq=s)[0].objects]
    frac = np.mean([o.crossover for o in objs])
    assert 0.38 < frac < 0.62, frac  # binomial, n ~ 200
    zero = SynthConfig(crossover_fraction=0.0)
    assert not any(o.crossover for s in range(10) for o in frames(zero, n=1, seq=s)[0].objects)
    # a crossover object has ~zero contrast against its local background in the temperature field
    one = SynthConfig(crossover_fraction=1.0, objects_per_frame=(3, 3), occluders=(0, 0),
                      hot_distractors=(0, 0), misregistration_px=0, misregistration_deg=0, misregistration_scale=0)
    p = frames(one, n=1, seq=1, condition="day")[0]
    t = p.thermal_celsius
    for o in p.objects:
        if o.height_px > 30 and o.occlusion == 0:
            m = p.instances == o.instance_id
            assert abs(float(np.median(t[m])) - o.temperature_c) < 1.0


def test_distractors_exist_in_one_modality_only_and_are_unlabeled():
    cfg = SynthConfig(hot_distractors=(2, 2), visible_distractors=(2, 2), objects_per_frame=(0, 0), occluders=(0, 0))
    p = frames(cfg, n=1, seq=0, condition="day")[0]
    kinds = sorted(d["kind"] for d in p.distractors)
    assert kinds == ["hot", "hot", "visible", "visible"]
    assert p.semantic.max() == 0 and not p.objects
    t = p.thermal_celsius
    for d in p.distractors:
        x0, y0, x1, y1 = [int(v) for v in d["box"]]
        cx, cy = (x0 + x1) // 2, y0 + (y1 - y0) // 3
        if d["kind"] == "hot" and y1 - y0 > 20:
            assert t[cy, cx] > 28.0  # a warm person-like blob


def test_homography_maps_thermal_to_visible():
    import cv2
    cfg = SynthConfig(thermal_factor=4, misregistration_px=3, misregistration_deg=1.0)
    p = frames(cfg, n=1)[0]
    # the warped thermal temperature field lines up with the labels: people are warm where the mask is
    t = cv2.warpPerspective(p.thermal_celsius, p.homography, (cfg.width, cfg.height))
    persons = [o for o in p.objects if o.class_id == PERSON and not o.crossover and o.height_px > 40 and o.occlusion == 0]
    for o in persons:
        m = cv2.erode((p.instances == o.instance_id).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        if m.sum() > 30:
            assert abs(float(np.median(t[m])) - o.temperature_c) < 3.0


def test_stamps_have_offset_and_jitter():
    cfg = SynthConfig(fps=10, thermal_time_offset_s=0.005, stamp_jitter_s=0.001, sequence_length=50)
    ps = frames(cfg, n=50)
    dv = np.diff([p.stamp_visible_ns for p in ps]) / 1e9
    assert np.mean(dv) == pytest.approx(0.1, abs=0.002) and np.std(dv) > 0
    off = np.array([p.stamp_thermal_ns - p.stamp_visible_ns for p in ps]) / 1e9
    assert np.mean(off) == pytest.approx(0.005, abs=0.001)


def test_objects_move_smoothly_within_a_sequence():
    ps = frames(SynthConfig(objects_per_frame=(3, 3)), n=5, seq=4)
    tracks = {}
    for p in ps:
        for o in p.objects:
            tracks.setdefault(o.track_id, []).append(((o.box[0] + o.box[2]) / 2))
    moves = [abs(b - a) for xs in tracks.values() for a, b in zip(xs, xs[1:])]
    assert moves and max(moves) < 0.1 * 320  # no teleporting


def test_all_conditions_and_classes_appear():
    cfg = SynthConfig(night_fraction=0.25, dusk_fraction=0.25, fog_fraction=0.25)
    ps = list(SyntheticGenerator(cfg, 0).pairs(400))
    assert {p.condition for p in ps} == {"day", "dusk", "night", "fog"}
    assert {o.class_id for p in ps for o in p.objects} == {1, 2, 3}
    assert {o.occlusion for p in ps for o in p.objects} == {0, 1, 2}


def test_detectability_index_is_the_whitened_norm_of_the_difference():
    from ms_perception.synth.generator import detectability_index
    assert detectability_index([3.0, 4.0], 1.0) == pytest.approx(5.0)               # sqrt(9 + 16)
    assert detectability_index([3.0, 4.0], [1.0, 4.0]) == pytest.approx(13 ** 0.5)  # sqrt(9 + 16 / 4)
    assert detectability_index(np.zeros((2, 3)), 2.0) == 0.0


def test_visibility_does_not_change_the_pairs():
    """Measuring visibility renders on copies of the noise stream: every pair, and every later
    frame, is the one generated without it; one entry per labelled object."""
    cfg = SynthConfig(width=320, height=256, thermal_factor=4, sequence_length=3)
    a = list(SyntheticGenerator(cfg, 5).pairs(6))
    b = list(SyntheticGenerator(cfg, 5).pairs(6, visibility=True))
    for x, y in zip(a, b):
        assert np.array_equal(x.visible, y.visible) and np.array_equal(x.thermal_raw, y.thermal_raw)
        assert x.visibility is None and len(y.visibility) == len(y.objects)
        assert all(v["visible_k"] >= 0 and v["thermal_k"] >= 0 for v in y.visibility)


def _one_person_cfg(**kw):
    return SynthConfig(width=320, height=256, thermal_factor=1, night_fraction=0.0, dusk_fraction=0.0,
                       fog_fraction=0.0, objects_per_frame=(1, 1), class_weights=(1.0, 0.0, 0.0),
                       hot_distractors=(0, 0), visible_distractors=(0, 0), occluders=(0, 0),
                       sequence_length=3, **kw)


def test_a_crossover_person_on_a_flat_background_has_no_thermal_signal(monkeypatch):
    """Without background texture, a person at the road's temperature standing on the road changes
    no thermal pixel: the frame without it is the same image under the same noise, k = 0 exactly;
    the visible image shows the same person plainly by day, and a warm person stands far out."""
    from ms_perception.synth import generator as G
    monkeypatch.setattr(G, "_noise_texture", lambda rng, h, w, cell: np.zeros((h, w), np.float32))
    on_road = warm = 0
    for seed in range(6):
        for cross, k_key in ((1.0, "cold"), (0.0, "warm")):
            for p in SyntheticGenerator(_one_person_cfg(crossover_fraction=cross), seed).pairs(3, visibility=True):
                for o, v in zip(p.objects, p.visibility):
                    if k_key == "warm":
                        warm += 1
                        assert v["thermal_k"] > 100
                    elif abs(o.temperature_c - (p.ambient_c + 14.0)) < 1e-3:   # a day road: ambient + 14 °C
                        on_road += 1
                        assert v["thermal_k"] == 0.0 and v["visible_k"] > 5.0
    assert on_road > 0 and warm > 0


def test_thermal_detectability_scales_with_the_inverse_of_the_sensor_noise():
    """k = |difference| / sigma: doubling the NETD (5 -> 10 counts) halves a warm person's thermal k,
    sqrt((25 + 1/12) / (100 + 1/12)) = 0.5006, up to the rounding of the counts."""
    ks = []
    for netd in (0.05, 0.10):
        p = next(SyntheticGenerator(_one_person_cfg(thermal_netd_k=netd), 2).pairs(1, visibility=True))
        ks.append(p.visibility[0]["thermal_k"])
    assert ks[1] / ks[0] == pytest.approx(0.5006, rel=0.02)


def test_visibility_in_a_models_input_keeps_what_the_input_keeps():
    """``to_input`` measures k again in what a model is fed. An input that passes the visible image
    through unchanged gives the same visible k exactly (same differences, same noise estimate); one
    that drops thermal gives thermal k = 0 exactly."""
    def passthrough_no_thermal(visible, thermal_raw):
        return visible, np.zeros(thermal_raw.shape, np.uint8)
    cfg = SynthConfig(width=320, height=256, thermal_factor=4, sequence_length=3)
    for p in SyntheticGenerator(cfg, 5).pairs(3, visibility=True, to_input=passthrough_no_thermal):
        for v in p.visibility:
            assert v["visible_input_k"] == v["visible_k"] and v["thermal_input_k"] == 0.0


def test_a_coarse_thermal_window_erases_a_crossover_persons_texture_hole():
    """A person at the background's temperature shows in thermal only as a smooth hole in the road's
    texture (k in the tens at 0.05 K NETD). Through the runtime's 8-bit window at its default
    -10..50 °C (0.24 K a step) it keeps most of it; through a -100..1000 °C window (4.3 K a step) the
    texture and the hole are both below one step, so the model's input loses it (k < 5)."""
    from ms_perception.core.frames import Frame
    from ms_perception.core.preprocess import Letterbox, ThermalNormalization, thermal_input
    lb = Letterbox.fit((256, 320), (256, 320))

    def window(lo, hi):
        norm = ThermalNormalization(celsius_min=lo, celsius_max=hi)
        return lambda v, t: (v, thermal_input(Frame(t, 0, "mono16"), norm, np.eye(3), lb, (256, 320)))
    ks = {}
    for name, fn in (("default", window(-10.0, 50.0)), ("coarse", window(-100.0, 1000.0))):
        for seed in range(4):
            for p in SyntheticGenerator(_one_person_cfg(crossover_fraction=1.0), seed).pairs(1, visibility=True, to_input=fn):
                for o, v in zip(p.objects, p.visibility):
                    ks.setdefault(name, []).append((v["thermal_k"], v["thermal_input_k"]))
    raw, default = np.array(ks["default"]).T
    assert np.array_equal(raw, np.array(ks["coarse"])[:, 0])   # the camera's own k does not depend on the input
    assert raw.min() > 20 and default.min() > 10
    assert np.array(ks["coarse"])[:, 1].max() < 5
