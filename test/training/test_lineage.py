"""A model's lineage from `train fit` through `train export` to the card that replay and the node
show: the parent model's hash, each dataset's content hash, the number of labeled fleet frames."""
import json
import shutil
import sys
from pathlib import Path

import cv2
import pytest
import yaml
from ms_perception_training.cli import main
from ms_perception_training.data.sources import ConcatPool, DataConfig, open_source
from ms_perception_training.lineage import content_sha256, file_sha256
from ms_perception_training.models.config import load_model_config

from ms_perception.core.card import lineage_summary, read_card
from ms_perception.synth.writers import write_dataset
from ms_perception.synth.generator import SynthConfig, SyntheticGenerator

ROOT = Path(__file__).resolve().parents[2]
GAFF = ROOT / "config/models/tiny/gaff_three_branch_r18_retinanet.yaml"
SYNTH = {"pairs": 4, "width": 160, "height": 128, "thermal_factor": 4, "night_fraction": 0.5, "seed": 7}


def experiment(path: Path, data: dict, **fit) -> Path:
    path.write_text(yaml.safe_dump({"model": str(GAFF), "data": data, "iterations": 3, "batch_size": 2,
                                    "warmup_iterations": 1, "checkpoint_every": 100, "tensorboard": False, **fit}))
    return path


def run(argv, capsys, code=0):
    got = main(argv)
    out = capsys.readouterr()
    assert got == code, out.err
    return out


def test_content_hash_follows_the_bytes_not_the_folder(tmp_path):
    """The same dataset in another folder hashes the same; one changed thermal pixel, one moved box
    or another order of items changes the hash."""
    sps = list(SyntheticGenerator(SynthConfig(width=160, height=128, thermal_factor=4, misregistration_px=0.0),
                                  3).pairs(3))
    write_dataset("coco", iter(sps), tmp_path / "a", thermal_factor=4, test_every=0)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    mcfg = load_model_config(GAFF)
    ha = content_sha256(open_source(mcfg, DataConfig(type="coco", root=str(tmp_path / "a"))))
    hb = content_sha256(open_source(mcfg, DataConfig(type="coco", root=str(tmp_path / "b"))))
    assert ha == hb and len(ha) == 64
    doc = json.loads((tmp_path / "b" / "annotations.json").read_text())
    th = tmp_path / "b" / doc["images"][1]["thermal_file_name"]
    raw = cv2.imread(str(th), cv2.IMREAD_UNCHANGED)
    raw[0, 0] += 1
    cv2.imwrite(str(th), raw)
    hc = content_sha256(open_source(mcfg, DataConfig(type="coco", root=str(tmp_path / "b"))))
    assert hc != ha
    shutil.rmtree(tmp_path / "b")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    doc["annotations"][0]["bbox"][0] += 1.0
    (tmp_path / "b" / "annotations.json").write_text(json.dumps(doc))
    assert content_sha256(open_source(mcfg, DataConfig(type="coco", root=str(tmp_path / "b")))) != ha
    doc["annotations"][0]["bbox"][0] -= 1.0
    doc["images"] = doc["images"][::-1]
    (tmp_path / "b" / "annotations.json").write_text(json.dumps(doc))
    assert content_sha256(open_source(mcfg, DataConfig(type="coco", root=str(tmp_path / "b")))) != ha
    # the synthetic source hashes its generated pairs: another seed, another hash; the same seed, the same
    s1 = content_sha256(open_source(mcfg, DataConfig(**SYNTH)))
    assert s1 == content_sha256(open_source(mcfg, DataConfig(**SYNTH)))
    assert s1 != content_sha256(open_source(mcfg, DataConfig(**{**SYNTH, "seed": 8})))


def test_concat_pool_repeats_each_source_in_order():
    pool = ConcatPool([(["a0", "a1"], 1, None), (["b0", "b1", "b2"], 2, None)])
    assert len(pool) == 8
    assert [pool[i] for i in range(8)] == ["a0", "a1", "b0", "b1", "b2", "b0", "b1", "b2"]
    with pytest.raises(IndexError):
        pool[8]


def test_fleet_fine_tune_records_its_lineage_from_fit_to_the_card_replay_shows(tmp_path, capsys):
    """parent fit -> export (the robots' model) -> robots capture with it -> merge / select / export /
    import -> fine-tune from the parent on the original data plus the fleet labels (repeat 2) ->
    export: the child's card names the parent model's hash, both datasets' content hashes, the 3
    fleet frames and the model that captured them; replay prints it; a parent model exported from
    another checkpoint is refused."""
    sys.path.insert(0, str(ROOT / "test" / "runtime"))
    from fleet_helpers import accept_pre_annotations, capture_robot
    from ms_perception.cli import main as runtime_main
    from ms_perception.demo import make_demo_bag

    run(["fit", "--config", str(experiment(tmp_path / "parent.yaml", SYNTH)), "--out", str(tmp_path / "p")], capsys)
    plin = json.loads((tmp_path / "p" / "lineage.json").read_text())
    assert plin["generation"] == 0 and "parent" not in plin and plin["fleet_frames"] == 0
    assert [d["type"] for d in plin["datasets"]] == ["synthetic"] and plin["datasets"][0]["items"] == 4
    run(["export", "--config", str(GAFF), "--checkpoint", str(tmp_path / "p" / "last.pt"), "--out",
         str(tmp_path / "parent.onnx")], capsys)
    parent = read_card(tmp_path / "parent.onnx")
    assert parent.lineage["checkpoint_sha256"] == file_sha256(tmp_path / "p" / "last.pt")
    assert parent.lineage["datasets"] == plin["datasets"]
    assert lineage_summary(parent).startswith("lineage: trained from scratch (generation 0) on synthetic[4 items")

    robot, _ = capture_robot(tmp_path / "caps", "r7", seed=5, pairs=3, model_path=str(tmp_path / "parent.onnx"))
    ds = accept_pre_annotations(robot, tmp_path, budget=3)
    capsys.readouterr()

    child_cfg = experiment(tmp_path / "child.yaml", {**SYNTH, "also": [{"type": "captures", "root": str(ds),
                                                                        "repeat": 2, "workers": 0}]})
    run(["fit", "--config", str(child_cfg), "--out", str(tmp_path / "c"), "--init-checkpoint",
         str(tmp_path / "p" / "last.pt"), "--parent-model", str(tmp_path / "parent.onnx")], capsys)
    lin = json.loads((tmp_path / "c" / "lineage.json").read_text())
    assert lin["generation"] == 1 and lin["fleet_frames"] == 3
    assert lin["parent"]["model_sha256"] == parent.graph_sha256
    assert lin["parent"]["checkpoint_sha256"] == file_sha256(tmp_path / "p" / "last.pt")
    assert lin["ancestors"] == [{"generation": 0, "model_sha256": parent.graph_sha256,
                                 "checkpoint_sha256": lin["parent"]["checkpoint_sha256"]}]
    synth, fleet = lin["datasets"]
    assert synth["content_sha256"] == plin["datasets"][0]["content_sha256"]        # the same original data
    assert fleet["type"] == "captures" and fleet["items"] == 3 and fleet["repeat"] == 2
    assert fleet["fleet_frames"] == 3 and fleet["robots"] == ["r7"]
    assert fleet["captured_by"] == [parent.graph_sha256[:16]]
    mcfg = load_model_config(GAFF)
    assert fleet["content_sha256"] == content_sha256(open_source(mcfg, DataConfig(type="captures", root=str(ds))))

    run(["export", "--config", str(GAFF), "--checkpoint", str(tmp_path / "c" / "last.pt"), "--out",
         str(tmp_path / "child.onnx")], capsys)
    child = read_card(tmp_path / "child.onnx")
    assert child.lineage["parent"]["model_sha256"] == parent.graph_sha256
    assert child.lineage["checkpoint_sha256"] == file_sha256(tmp_path / "c" / "last.pt")
    line = lineage_summary(child)
    assert f"fine-tuned from model {parent.graph_sha256[:16]} (generation 1)" in line
    assert "captures[3 items" in line and line.endswith("; 3 labeled fleet frames")

    bag, cal, _ = make_demo_bag(tmp_path / "bag", pairs=3, seed=11, sequence_length=3)
    assert runtime_main(["replay", str(bag), "--model", str(tmp_path / "child.onnx"), "--calibration",
                         str(cal)]) == 0
    out = capsys.readouterr().out
    assert line in out.splitlines()[0]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["model_sha256"] == child.graph_sha256 and report["lineage"] == child.lineage

    # a second generation from the child's checkpoint, named with the PARENT's model: refused
    err = run(["fit", "--config", str(child_cfg), "--out", str(tmp_path / "bad"), "--init-checkpoint",
               str(tmp_path / "c" / "last.pt"), "--parent-model", str(tmp_path / "parent.onnx")], capsys, code=2).err
    assert "was exported from checkpoint" in err and "not from fit.init_checkpoint" in err
    assert not (tmp_path / "bad" / "last.pt").exists()
