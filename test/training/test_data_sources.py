"""The data seam: every source trains through `train fit`, the KAIST folder on disk equals the
in-memory pool, DataLoader workers give the same batches, `train eval --data` writes the
benchmark formats that the project's own external evaluators read back."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from ms_perception_training.cli import main
from ms_perception_training.data.loader import make_batch, train_loader
from ms_perception_training.data.sources import DataConfig, make_pool, open_source
from ms_perception_training.distributed import Dist, EpochSampler
from ms_perception_training.models.config import load_model_config

from ms_perception.synth.generator import SynthConfig, SyntheticGenerator
from ms_perception.synth.writers import voc_xml, write_dataset

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "config/models/tiny"
GAFF = TINY / "gaff_three_branch_r18_retinanet.yaml"      # person, bicycle, car
SYNTH = dict(width=160, height=128, thermal_factor=4, night_fraction=0.5, seed=7)


def synth_pairs(n):
    cfg = SynthConfig(width=SYNTH["width"], height=SYNTH["height"], thermal_factor=SYNTH["thermal_factor"],
                      night_fraction=SYNTH["night_fraction"], misregistration_px=0.0)
    return list(SyntheticGenerator(cfg, SYNTH["seed"]).pairs(n))


def img(path: Path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr)


def experiment(tmp_path, model: Path, data: dict, **fit) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump({"model": str(model), "data": data, "iterations": 3, "batch_size": 2,
                                 "warmup_iterations": 1, "checkpoint_every": 100, "tensorboard": False, **fit}))
    return p


def run_cli(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out.strip().splitlines()[-1]), out.out


def test_synthetic_kaist_folder_on_disk_yields_the_in_memory_pool(tmp_path):
    """Same pairs, two paths: the generator's pool in memory, and the KAIST-layout folder the
    synthetic writer puts on disk read through the kaist source (16-bit thermal PNGs: lossless;
    visible JPEG q95; bbGt coordinates with 6 significant digits)."""
    mcfg = load_model_config(TINY / "twostream_add_r18_retinanet.yaml")     # person only: KAIST's class
    n = 6
    pool = make_pool(mcfg, DataConfig(pairs=n, **SYNTH))
    write_dataset("kaist", iter(synth_pairs(n)), tmp_path / "kaist", thermal_factor=SYNTH["thermal_factor"],
                  test_every=0)
    disk = open_source(mcfg, DataConfig(type="kaist", root=str(tmp_path / "kaist"), split="train",
                                        thermal_dir="lwir16"))
    assert len(disk) == n
    persons = 0
    for a, i in zip(pool, range(n)):
        b = disk[i]
        assert np.array_equal(a.thermal, b.thermal)                    # registration included
        diff = np.abs(a.visible.astype(int) - b.visible.astype(int))
        assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 12    # JPEG q95
        keep = ~b.ignore                                               # cyclists are KAIST ignore regions
        assert np.allclose(a.boxes, b.boxes[keep], atol=1e-3) and np.array_equal(a.labels, b.labels[keep])
        assert np.allclose(a.rig_boxes, b.rig_boxes[keep], atol=1e-3)
        assert a.condition == b.condition and a.letterbox == b.letterbox
        persons += len(a.boxes)
    assert persons > 0
    # the batches the trainer builds from either are equal up to the JPEG error
    ba, bb = make_batch(pool, [0, 1], mcfg, seed=1, epoch=0), make_batch(disk, [0, 1], mcfg, seed=1, epoch=0)
    assert torch.equal(ba.thermal, bb.thermal)
    assert all(torch.allclose(x[0], y[0], atol=1e-3) for x, y in zip(ba.targets, bb.targets))


def test_loader_workers_give_the_batches_of_the_training_process(tmp_path):
    mcfg = load_model_config(GAFF)
    pool = make_pool(mcfg, DataConfig(pairs=12, **SYNTH))
    sampler = EpochSampler(len(pool), 4, Dist(), seed=3)
    loader = train_loader(pool, mcfg, sampler, start=2, total=6, seed=3, mixup_p=0.5, workers=2, pin_memory=False)
    got = list(loader)
    assert len(got) == 4
    for it, c in zip(range(2, 6), got):
        epoch, idx = sampler.indices(it)
        want = make_batch(pool, idx, mcfg, seed=3, epoch=epoch, mixup=0.5)
        assert c["indices"] == idx and c["visible"].dtype == torch.uint8
        from ms_perception_training.data.loader import to_batch
        b = to_batch(c, mcfg)
        assert torch.equal(b.visible, want.visible) and torch.equal(b.thermal, want.thermal)
        assert all(torch.equal(x[0], y[0]) and torch.equal(x[2], y[2]) for x, y in zip(b.targets, want.targets))


@pytest.mark.parametrize("fmt,model,data", [
    ("kaist", GAFF, {"type": "kaist", "split": "train"}),
    ("flir", GAFF, {"type": "flir_aligned", "split": "train"}),
    ("mfnet", TINY / "gaff_r18_pspnet.yaml", {"type": "mfnet", "split": "train"}),
    ("coco", GAFF, {"type": "coco"}),
])
def test_fit_trains_from_the_synthetic_writer_output_in_each_layout(tmp_path, capsys, fmt, model, data):
    root = tmp_path / fmt
    write_dataset(fmt, iter(synth_pairs(8)), root, thermal_factor=4, test_every=0 if fmt == "coco" else 2)
    exp = experiment(tmp_path, model, {**data, "root": str(root), "workers": 2 if fmt == "kaist" else 0})
    s, text = run_cli(["fit", "--config", str(exp), "--out", str(tmp_path / "run")], capsys)
    assert s["iterations"] == 3 and np.isfinite(s["last_loss"])
    assert s["images_per_second"] > 0 and 0 <= s["data_wait_fraction"] <= 1
    assert s["data_wait_seconds"] + s["compute_seconds"] > 0


def _kaist_real(r: Path):
    """KAIST as released: 3-channel 8-bit lwir JPEGs, bbGt with ignore labels, set/V/I names."""
    rng = np.random.default_rng(0)
    names = []
    for k in range(4):
        s, v, i = ("set00" if k < 2 else "set03"), "V000", f"I{k:05d}"
        img(r / s / v / "visible" / f"{i}.jpg", rng.integers(0, 255, (96, 128, 3), np.uint8))
        img(r / s / v / "lwir" / f"{i}.jpg", rng.integers(0, 255, (96, 128, 3), np.uint8))
        (r / "annotations" / s / v).mkdir(parents=True, exist_ok=True)
        (r / "annotations" / s / v / f"{i}.txt").write_text(
            "% bbGt version=3\nperson 10 20 20 50 0 0 0 0 0 0 0\npeople 60 20 30 50 0 0 0 0 0 0 0\n")
        names.append(f"{s}/{v}/{i}")
    (r / "imageSets").mkdir()
    (r / "imageSets/train-all-02.txt").write_text("\n".join(names) + "\n")
    (r / "imageSets/test-all-20.txt").write_text("\n".join(names[1:]) + "\n")


def _llvip_real(r: Path):
    for k in range(2):
        img(r / "visible/train" / f"01000{k}.jpg", np.full((96, 128, 3), 90, np.uint8))
        img(r / "infrared/train" / f"01000{k}.jpg", np.full((96, 128, 3), 200, np.uint8))
        (r / "Annotations").mkdir(parents=True, exist_ok=True)
        (r / "Annotations" / f"01000{k}.xml").write_text(voc_xml(f"01000{k}.jpg", 128, 96,
                                                                 [("person", (11, 21, 40, 80), 0)]))


def _vedai_real(r: Path):
    for k in range(2):
        ident = f"0000000{k}"
        img(r / "Vehicules512" / f"{ident}_co.png", np.full((128, 128, 3), 80, np.uint8))
        img(r / "Vehicules512" / f"{ident}_ir.png", np.full((128, 128), 160, np.uint8))
        (r / "Annotations512").mkdir(parents=True, exist_ok=True)
        (r / "Annotations512" / f"{ident}.txt").write_text("50 50 0.1 1 1 0 40 60 60 40 45 45 55 55\n")
    (r / "fold01.txt").write_text("00000000\n00000001\n")


def _flir_real(r: Path):
    for k in range(2):
        stem = f"FLIR_0000{k}"
        img(r / "JPEGImages" / f"{stem}_RGB.jpg", np.full((96, 128, 3), 70, np.uint8))
        img(r / "JPEGImages" / f"{stem}_PreviewData.jpeg", np.full((96, 128), 150, np.uint8))
        (r / "Annotations").mkdir(parents=True, exist_ok=True)
        (r / "Annotations" / f"{stem}_PreviewData.xml").write_text(voc_xml(
            f"{stem}_PreviewData.jpeg", 128, 96, [("person", (10, 10, 30, 60), 0), ("dog", (50, 50, 60, 60), 0),
                                       ("car", (70, 50, 100, 70), 0)],
            origin=0))
    (r / "align_train.txt").write_text("FLIR_00000\nFLIR_00001\n")


def _captures(r: Path):
    """A labeled fleet-capture dataset: COCO instances whose images name their thermal file."""
    images, anns = [], []
    for k in range(2):
        img(r / "visible" / f"{k}.png", np.full((96, 128, 3), 100, np.uint8))
        img(r / "thermal" / f"{k}.png", np.full((24, 32), 30000 + k, np.uint16))    # radiometric counts
        images.append({"id": k + 1, "file_name": f"visible/{k}.png", "thermal_file_name": f"thermal/{k}.png",
                       "width": 128, "height": 96})
        anns.append({"id": k + 1, "image_id": k + 1, "category_id": 1, "bbox": [20, 10, 20, 40], "area": 800,
                     "iscrowd": 0})
    (r / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                    "categories": [{"id": 1, "name": "person"}]}))


@pytest.mark.parametrize("kind,model,data,make", [
    ("kaist", GAFF, {"type": "kaist", "split": "train-all-02"}, _kaist_real),
    ("llvip", GAFF, {"type": "llvip"}, _llvip_real),
    ("vedai", TINY / "retinanet_single_r18_vedai.yaml", {"type": "vedai", "split": "fold01"}, _vedai_real),
    ("flir", GAFF, {"type": "flir_aligned"}, _flir_real),
    ("captures", GAFF, {"type": "captures"}, _captures),
])
def test_fit_trains_from_hand_made_fixtures_of_each_real_layout(tmp_path, capsys, kind, model, data, make):
    make(tmp_path / kind)
    exp = experiment(tmp_path, model, {**data, "root": str(tmp_path / kind), "workers": 0})
    s, text = run_cli(["fit", "--config", str(exp), "--out", str(tmp_path / "run")], capsys)
    assert s["iterations"] == 3 and np.isfinite(s["last_loss"])


def test_real_layout_items_go_through_the_runtime_preprocessing(tmp_path):
    """KAIST ignore regions are kept for evaluation and left out of the training targets; 3-channel
    8-bit thermal is read as grey; 16-bit captures thermal is windowed like the node does."""
    mcfg = load_model_config(GAFF)
    _kaist_real(tmp_path / "k")
    it = open_source(mcfg, DataConfig(type="kaist", root=str(tmp_path / "k"), split="train-all-02"))[0]
    assert it.ignore.tolist() == [False, True] and it.labels.tolist() == [0, 0]
    assert it.letterbox.src_hw == (96, 128) and it.thermal.shape == (96, 128)
    b = make_batch([it], [0], mcfg, augment=False)
    assert b.targets[0][0].tolist() == [[10.0, 20.0, 30.0, 70.0]]      # the 'people' region is not a target
    logs = []                  # classes the model does not have: left out, counted, said once
    _flir_real(tmp_path / "f")
    person_only = load_model_config(TINY / "twostream_add_r18_retinanet.yaml")
    f = open_source(person_only, DataConfig(type="flir_aligned", root=str(tmp_path / "f")), log=logs.append)
    assert len(logs) == 1 and "left out: {'car': 2}" in logs[0] and f[0].labels.tolist() == [0]
    _captures(tmp_path / "c")
    c = open_source(mcfg, DataConfig(type="captures", root=str(tmp_path / "c")))
    from ms_perception.core.preprocess import ThermalNormalization
    n = ThermalNormalization()
    want = round(np.clip((30000 - n.raw_min) / (n.raw_max - n.raw_min), 0, 1) * 255)
    assert int(c[0].thermal[48, 64]) == want and c[0].thermal.shape == (96, 128)   # upsampled 4x, windowed


def test_train_eval_on_a_test_split_writes_benchmark_files_external_evaluators_read(tmp_path, capsys):
    root = tmp_path / "kaist"
    cfg = SynthConfig(width=640, height=512, sequence_length=4, thermal_factor=4, misregistration_px=0.0)
    write_dataset("kaist", SyntheticGenerator(cfg, 3).pairs(8), root, thermal_factor=4, test_every=2)
    exp = experiment(tmp_path, GAFF, {"type": "kaist", "root": str(root), "split": "train", "workers": 0})
    run_cli(["fit", "--config", str(exp), "--out", str(tmp_path / "run"), "--iterations", "2"], capsys)
    r, _ = run_cli(["eval", "--config", str(exp), "--checkpoint", str(tmp_path / "run/last.pt"),
                    "--out", str(tmp_path / "ev"), "--json"], capsys)
    test_names = (root / "imageSets/test.txt").read_text().split()
    assert r["data"] == "kaist" and r["pairs"] == len(test_names) == 4
    assert "all" in r["miss_rate"]
    # the project's external evaluator (ms-perception eval kaist) reads the txt against the
    # dataset's own annotations and gets the same miss rate
    from ms_perception.cli import main as runtime_main
    code = runtime_main(["eval", "kaist", "--annotations", str(root / "annotations.json"), "--detections",
                         r["files"]["detections_kaist.txt"], "--json"])
    out = capsys.readouterr().out
    assert code == 0
    ext = json.loads(out.strip().splitlines()[-1])
    assert set(ext) == set(r["miss_rate"])
    assert all(ext[k] == pytest.approx(r["miss_rate"][k], abs=0.01) for k in ext)
    # a miss rate of 100 % on both sides would hide a wrong index or coordinate transform: the
    # test split's own boxes (at the model input) written as detections score 0 % outside
    from ms_perception_training.evaluate import write_benchmark_files

    from ms_perception.core.postprocess import Detections
    mcfg = load_model_config(GAFF)
    items = list(open_source(mcfg, DataConfig(type="kaist", root=str(root), split="test")))
    perfect = [Detections(it.boxes[~it.ignore], np.full(int((~it.ignore).sum()), 0.9, np.float32),
                          it.labels[~it.ignore], np.arange(int((~it.ignore).sum()))) for it in items]
    files = write_benchmark_files(items, perfect, mcfg.class_names, tmp_path / "perfect")
    assert runtime_main(["eval", "kaist", "--annotations", str(root / "annotations.json"), "--detections",
                         files["detections_kaist.txt"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["all"] == pytest.approx(0.0, abs=0.01)
    # COCO results + ground truth load in pycocotools
    from ms_perception.metrics.coco import coco_eval
    stats = coco_eval(r["files"]["ground_truth_coco.json"], r["files"]["detections_coco.json"])
    assert stats.get("AP", stats.get("mAP")) == pytest.approx(r["map"] / 100, abs=1e-3)


def test_bad_data_config_is_one_clear_line(tmp_path, capsys):
    exp = experiment(tmp_path, GAFF, {"type": "kitti", "root": "x"})
    assert main(["fit", "--config", str(exp), "--out", str(tmp_path / "o")]) == 2
    assert "data.type must be one of" in capsys.readouterr().err
    exp = experiment(tmp_path, GAFF, {"type": "kaist"})
    assert main(["fit", "--config", str(exp), "--out", str(tmp_path / "o")]) == 2
    assert "needs data.root" in capsys.readouterr().err
    exp = experiment(tmp_path, GAFF, {"type": "kaist", "root": str(tmp_path / "none")})
    assert main(["fit", "--config", str(exp), "--out", str(tmp_path / "o")]) == 2
    assert "KAIST image list" in capsys.readouterr().err


def test_active_learning_refuses_a_disk_source_instead_of_generating_data(tmp_path):
    """train active still reads the synthetic pool only: a KAIST config must not silently train
    on generated pairs."""
    mcfg = load_model_config(GAFF)
    with pytest.raises(ValueError, match="synthetic source only"):
        make_pool(mcfg, DataConfig(type="kaist", root=str(tmp_path)))


def test_fit_trains_on_fleet_labels_imported_by_captures_import(tmp_path, capsys):
    """The loop's hand-over: robots capture (runtime pipeline) -> captures merge / select / export
    (COCO) -> the labels come back (here the pre-annotations, as an annotator accepting them) ->
    captures import -> `train fit` reads the dataset, with each frame's thermal registered by the
    homography the robot used (not the scale between the image sizes)."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
    from fleet_helpers import accept_pre_annotations, capture_robot
    from ms_perception.core.preprocess import Letterbox, ThermalNormalization, thermal_to_unit, warp_thermal
    from ms_perception.core.frames import Frame
    robot, sps = capture_robot(tmp_path / "caps", "r1", seed=5, pairs=3)
    ds = accept_pre_annotations(robot, tmp_path, budget=3)
    capsys.readouterr()
    mcfg = load_model_config(GAFF)
    items = open_source(mcfg, DataConfig(type="captures", root=str(ds)))
    doc = json.loads((ds / "annotations.json").read_text())
    im = doc["images"][0]
    hom = np.asarray(im["homography_thermal_to_visible"])
    np.testing.assert_allclose(hom, sps[0].homography / sps[0].homography[2, 2], atol=1e-6)
    raw = cv2.imread(str(ds / im["thermal_file_name"]), cv2.IMREAD_UNCHANGED)
    lb = Letterbox.fit((im["height"], im["width"]), (mcfg.input.height, mcfg.input.width))
    want = warp_thermal(thermal_to_unit(Frame(raw, 0, "mono16"), ThermalNormalization()), hom, lb, lb.dst_hw)
    got = items[0].thermal.astype(np.float32) / (255.0 if items[0].thermal.dtype == np.uint8 else 1.0)
    assert got.shape == want.shape
    assert np.abs(got - want).mean() < 0.01
    scale = np.diag([im["width"] / raw.shape[1], im["height"] / raw.shape[0], 1.0])   # what a missing homography gives
    by_scale = warp_thermal(thermal_to_unit(Frame(raw, 0, "mono16"), ThermalNormalization()), scale, lb, lb.dst_hw)
    assert np.abs(got - by_scale).mean() > 3 * np.abs(got - want).mean()
    n_boxes = sum(1 for a in doc["annotations"] if a["image_id"] == im["id"])
    assert len(items[0].boxes) == n_boxes
    cfg = experiment(tmp_path, GAFF, {"type": "captures", "root": str(ds), "workers": 0})
    s, _ = run_cli(["fit", "--config", str(cfg), "--out", str(tmp_path / "run")], capsys)
    assert s["iterations"] == 3 and np.isfinite(s["last_loss"])


def test_fit_trains_segmentation_on_fleet_label_maps(tmp_path, capsys):
    """Segmentation captures -> export (polygon pre-annotations) -> accepted -> import: the dataset's
    label maps reach `train fit` through the letterbox, dataset classes matched to the model's by
    name (unlabeled/car/person -> the MFNet model's ids 0/1/2)."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
    from fleet_helpers import accept_pre_annotations, capture_segmentation_robot
    from ms_perception.core.preprocess import Letterbox
    from ms_perception_training.data.sources import letterbox_labels
    masks = []
    for i in range(2):
        m = np.zeros((64, 80), np.uint8)
        m[5 + i:15 + i, 10:20] = 1          # car
        m[30:50, 40:46] = 2                 # person
        masks.append(m)
    robot = capture_segmentation_robot(tmp_path / "caps", "s1", masks, ["unlabeled", "car", "person"])
    ds = accept_pre_annotations(robot, tmp_path, budget=2)
    capsys.readouterr()
    seg_cfg = TINY / "gaff_r18_pspnet.yaml"
    mcfg = load_model_config(seg_cfg)
    items = open_source(mcfg, DataConfig(type="captures", root=str(ds)))
    doc = json.loads((ds / "annotations.json").read_text())
    for item, im in zip([items[i] for i in range(len(items))], doc["images"]):
        key = im["ms_perception"]["record"]
        want = cv2.imread(str(tmp_path / "pool" / "records" / key / "mask.png"), cv2.IMREAD_UNCHANGED)
        lb = Letterbox.fit((64, 80), (mcfg.input.height, mcfg.input.width))
        np.testing.assert_array_equal(item.semantic, letterbox_labels(want, lb))
        assert set(np.unique(item.semantic)) == {0, 1, 2, 255}       # 255: the letterbox padding
    cfg = experiment(tmp_path, seg_cfg, {"type": "captures", "root": str(ds), "workers": 0})
    s, _ = run_cli(["fit", "--config", str(cfg), "--out", str(tmp_path / "run")], capsys)
    assert s["iterations"] == 3 and np.isfinite(s["last_loss"])


def test_the_synthetic_source_takes_the_crossover_fraction_and_records_it_in_the_lineage():
    """data.crossover_fraction reaches the generator (1.0: every object at the background's
    temperature; 0.0: none), the lineage names it, and a value outside [0, 1] is one config error."""
    from ms_perception_training.config import ConfigError
    from ms_perception_training.data.sources import synth_generator
    from ms_perception_training.lineage import dataset_entry
    for frac, expect in ((1.0, True), (0.0, False)):
        d = DataConfig(pairs=6, sequence_length=3, crossover_fraction=frac, **SYNTH)
        objs = [o for sp in synth_generator(d).pairs(6) for o in sp.objects]
        assert objs and all(o.crossover is expect for o in objs)
    d = DataConfig(pairs=2, crossover_fraction=0.25, **SYNTH)
    entry = dataset_entry(d, [])
    assert entry["generator"]["crossover_fraction"] == 0.25 and entry["generator"]["sequence_length"] == 20
    with pytest.raises(ConfigError, match="crossover_fraction must lie in \\[0, 1\\], got 1.5"):
        DataConfig(crossover_fraction=1.5)


def test_eval_synthetic_fixes_the_held_out_set_apart_from_the_training_data(tmp_path):
    """A recipe that trains on other generator settings (a crossover-rich fine-tune) can still be
    evaluated on the parent's held-out pairs: eval.synthetic overrides the training data's settings
    for the held-out set only; without it the held-out set takes the training data's settings."""
    from ms_perception_training.config import ConfigError
    from ms_perception_training.data.sources import synth_generator
    from ms_perception_training.experiment import held_out_data, load_fit_config
    data = {"pairs": 40, "sequence_length": 2, "crossover_fraction": 1.0, **SYNTH}
    p = experiment(tmp_path, GAFF, data)
    doc = yaml.safe_load(p.read_text())
    doc["eval"] = {"pairs": 6, "seed": 1001, "synthetic": {"crossover_fraction": 0, "sequence_length": 3}}
    p.write_text(yaml.safe_dump(doc))
    cfg, _ = load_fit_config(p)
    d = held_out_data(cfg)
    assert (d.pairs, d.seed, d.crossover_fraction, d.sequence_length) == (6, 1001, 0.0, 3)
    assert cfg.data.crossover_fraction == 1.0 and cfg.data.pairs == 40      # the training data untouched
    assert not any(o.crossover for sp in synth_generator(d).pairs(6) for o in sp.objects)
    doc["eval"] = {"pairs": 6}
    p.write_text(yaml.safe_dump(doc))
    d = held_out_data(load_fit_config(p)[0])
    assert (d.pairs, d.seed, d.crossover_fraction, d.sequence_length) == (6, 1001, 1.0, 2)
    for bad, msg in (({"crossover": 0.1}, "unknown key\\(s\\) \\['crossover'\\]"),
                     ({"night_fraction": True}, "eval.synthetic.night_fraction: expected a number")):
        doc["eval"] = {"pairs": 6, "synthetic": bad}
        p.write_text(yaml.safe_dump(doc))
        with pytest.raises(ConfigError, match=msg):
            load_fit_config(p)
