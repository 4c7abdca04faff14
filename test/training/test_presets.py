"""Every preset builds from its YAML and runs forward (tiny variants on the CPU)."""
import json
from pathlib import Path

import pytest
import torch
from ms_perception_training.config import ConfigError
from ms_perception_training.models.bn_fold import fold_batchnorm
from ms_perception_training.models.config import ModelConfig, load_model_config
from ms_perception_training.models.multispectral import flatten_levels
from ms_perception_training.models.info import count_macs, count_params
from ms_perception_training.models.build import build_model

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted(p.stem for p in (REPO / "config/models").glob("*.yaml"))
REQUIRED = ["twostream_add_r18_retinanet", "gaff_r18_retinanet", "md_student_r18_retinanet",
            "gaff_three_branch_r18_retinanet", "cfr_vgg16_fssd", "psfuse_vgg16_fssd", "cfl_vgg16_retinanet",
            "rgb_only_student_r18_retinanet", "gaff_r18_pspnet", "md_student_r18_pspnet",
            "pdf_teacher_r34_pafpn_retinanet", "pdf_student_r18_fpn_retinanet"]


def tiny(name):
    return load_model_config(REPO / "config/models/tiny" / f"{name}.yaml")


def inputs(cfg, n=2):
    torch.manual_seed(0)
    v = torch.randn(n, 3, cfg.input.height, cfg.input.width) if cfg.uses_visible else None
    t = torch.randn(n, 1, *cfg.input.thermal_hw) if cfg.uses_thermal else None
    return v, t


def test_required_presets_exist_with_tiny_variants():
    assert set(REQUIRED) <= set(PRESETS)
    assert PRESETS == sorted(p.stem for p in (REPO / "config/models/tiny").glob("*.yaml"))
    for name in PRESETS:
        cfg = load_model_config(REPO / "config/models" / f"{name}.yaml")
        sizes = ((640, 512), (640, 480), (512, 512)) + (((320, 256),) if name.startswith("default_") else ())
        assert (cfg.input.width, cfg.input.height) in sizes, name  # the embedded CPU default runs at 320x256


@pytest.mark.parametrize("name", PRESETS)
def test_tiny_preset_forward_shapes(name):
    cfg = tiny(name)
    model = build_model(cfg).eval()
    v, t = inputs(cfg)
    with torch.no_grad():
        out = model(v, t)
    assert out.main_branch in out.branches
    expect = {"visible_only": {"visible"}, "thermal_only": {"thermal"}}.get(cfg.fusion.scheme, {"fused"})
    if cfg.fusion.three_branch or cfg.fusion.scheme in ("decision", "cfl"):
        expect = {"fused", "visible", "thermal"}
    assert set(out.branches) == expect
    for b in out.branches.values():
        if cfg.task == "segmentation":
            assert b.mask_logits.shape == (2, cfg.num_classes, cfg.input.height, cfg.input.width)
            continue
        levels = model.anchor_levels()
        k = cfg.num_classes + (1 if cfg.head.type == "ssd" else 0)
        for lv, c, d in zip(levels, b.cls_logits, b.box_deltas):
            assert c.shape[1] == lv.num_anchors * k and d.shape[1] == lv.num_anchors * 4
            assert c.shape[-2:] == d.shape[-2:]
        assert len(b.cls_logits) == len(levels)
        assert flatten_levels(b.cls_logits, k).shape[1] == sum(
            lv.num_anchors * c.shape[-2] * c.shape[-1] for lv, c in zip(levels, b.cls_logits))
    if cfg.fusion.module == "gaff" and cfg.fusion.scheme == "halfway":
        keys = [k for k in out.attention if k.endswith(("intra_v", "intra_t", "inter_v", "inter_t"))]
        assert len(keys) >= 4
    if cfg.head.seg_aux:
        assert out.aux["seg_logits"].shape[1] == cfg.num_classes + 1
    if cfg.fusion.scheme == "cfl":
        w = out.aux["maf_weights"]
        assert torch.allclose(w.sum(1), torch.ones(2))


@pytest.mark.parametrize("name", PRESETS)
def test_bn_folding_keeps_outputs(name):
    cfg = tiny(name)
    torch.manual_seed(1)
    model = build_model(cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    v, t = inputs(cfg, 1)
    with torch.no_grad():
        ref = model(v, t).main
        fold_batchnorm(model)
        got = model(v, t).main
    pairs = [(ref.mask_logits, got.mask_logits)] if cfg.task == "segmentation" else \
        list(zip(ref.cls_logits + ref.box_deltas, got.cls_logits + got.box_deltas))
    for a, b in pairs:
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3)


def test_gaff_adds_exactly_table_4_12_overhead_to_the_r18_two_stream():
    base = build_model(load_model_config(REPO / "config/models/twostream_add_r18_retinanet.yaml"))
    gaff = build_model(load_model_config(REPO / "config/models/gaff_r18_retinanet.yaml"))
    nb, ng = count_params(base), count_params(gaff)
    assert ng - nb == 23_765_553 - 23_751_725
    assert (ng - nb) / nb < 0.001


def test_md_student_needs_less_compute_than_teacher_and_takes_16x_fewer_thermal_pixels():
    t_cfg, s_cfg = tiny("gaff_r18_retinanet"), tiny("md_student_r18_retinanet")
    assert s_cfg.input.thermal_hw == (s_cfg.input.height // 4, s_cfg.input.width // 4)
    teacher, student = build_model(t_cfg), build_model(s_cfg)
    assert count_macs(student) < 0.85 * count_macs(teacher)
    assert count_params(student) < count_params(teacher)
    # the student's first conv sees RGB + thermal x3
    assert student.encoder.backbone.conv1.weight.shape[1] == 6


def test_md_student_thermal_upsampling_is_bilinear():
    model = build_model(tiny("md_student_r18_retinanet"))
    t = torch.zeros(1, 1, 2, 2)
    t[0, 0, 0, 0] = 4.0
    up = model.prepare_thermal(t, (4, 4))
    assert up.shape == (1, 3, 4, 4) and torch.equal(up[:, 0], up[:, 2])
    assert torch.allclose(up[0, 0], torch.nn.functional.interpolate(t, size=(4, 4), mode="bilinear")[0, 0])
    with pytest.raises(ValueError, match="1 channel"):
        model.prepare_thermal(torch.zeros(1, 3, 2, 2), (4, 4))


def test_missing_thermal_is_a_clear_error():
    model = build_model(tiny("gaff_r18_retinanet"))
    with pytest.raises(ValueError, match="needs a thermal image"):
        model(torch.zeros(1, 3, 96, 128), None)


def test_config_errors_name_key_and_valid_options(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nfusion: {modul: gaff}\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['modul'\].*valid keys: .*'module'"):
        load_model_config(p)
    p.write_text("fusion: {module: sum}\n")
    with pytest.raises(ConfigError, match=r"fusion.module: 'sum' is not one of"):
        load_model_config(p)
    p.write_text("input: {thermal_factor: 8}\n")
    with pytest.raises(ConfigError, match="thermal_factor must be 1, 4, 16 or 64"):
        load_model_config(p)
    p.write_text("backbone: {width: fast}\n")
    with pytest.raises(ConfigError, match="backbone.width"):
        load_model_config(p)
    p.write_text("fusion: {stage: C9}\n")
    with pytest.raises(ConfigError, match=r"'C9' is not a stage of resnet18; valid: \['C2', 'C3', 'C4', 'C5'\]"):
        build_model(load_model_config(p))


def test_base_chain_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\nbackbone: {arch: resnet34, width: 0.5}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nname: b\nbackbone: {width: 0.25}\n")
    cfg = load_model_config(tmp_path / "b.yaml")
    assert (cfg.name, cfg.backbone.arch, cfg.backbone.width) == ("b", "resnet34", 0.25)
    assert isinstance(cfg, ModelConfig)


def test_train_info_json_last_line(capsys):
    from ms_perception_training.cli import main
    assert main(["info", "--config", str(REPO / "config/models/tiny/gaff_r18_retinanet.yaml"), "--json",
                 "--latency-runs", "1"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert isinstance(info["params"], int) and isinstance(info["macs"], int)
    assert info["params"] == count_params(build_model(tiny("gaff_r18_retinanet")))
    assert info["params_by_part"]["fusion"] > 0 and info["cpu_latency"]["median_ms"] > 0


PAPER_TABLE_5_4 = {"md_paper_visible_only_r18_retinanet": 12.44e6, "md_paper_image_r18_retinanet": 12.45e6,
                   "md_paper_gaff_teacher_r18_retinanet": 23.77e6, "md_paper_decision_r18_retinanet": 24.88e6,
                   "md_paper_student_r18_retinanet": 12.45e6}


@pytest.mark.parametrize("name", sorted(PAPER_TABLE_5_4))
def test_md_paper_presets_match_the_thesis_parameter_table_within_2_percent(name):
    """Thesis Table 5.4 (KAIST, ResNet-18 + RetinaNet): 1.244e7, 1.245e7, 2.377e7, 2.488e7."""
    cfg = load_model_config(REPO / "config/models" / f"{name}.yaml")
    n = count_params(build_model(cfg))
    assert abs(n / PAPER_TABLE_5_4[name] - 1) <= 0.02, f"{name}: {n:,} vs the paper's {PAPER_TABLE_5_4[name]:,.0f}"
    assert cfg.paper_params_m * 1e6 == PAPER_TABLE_5_4[name]
    if name == "md_paper_gaff_teacher_r18_retinanet":        # two complete streams: layer4 in each
        m = build_model(cfg)
        assert count_params(m.encoder.backbone_v) == count_params(m.encoder.backbone_t) == 11_689_512 - 513_000


def test_train_info_shows_the_paper_count_next_to_the_preset(capsys):
    from ms_perception_training.cli import main
    assert main(["info", "--config", str(REPO / "config/models/md_paper_image_r18_retinanet.yaml"),
                 "--latency-runs", "0"]) == 0
    out = capsys.readouterr().out
    info = json.loads(out.strip().splitlines()[-1])
    assert info["paper_params"]["params"] == 12_450_000
    assert info["paper_params"]["difference_percent"] == pytest.approx(100 * (info["params"] / 12.45e6 - 1), abs=0.01)
    assert "the paper: 12,450,000" in out
