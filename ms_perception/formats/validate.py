"""Structure and value checks for JSON result and annotation files: each failure is one line
naming ``file: item`` (``annotations[3].bbox``) and what is wrong, instead of a KeyError or
TypeError traceback from deep inside a metric, or a number silently wrong (a NaN score sorts
as if it were a real one)."""
from __future__ import annotations

import math

from ms_perception.formats.errors import FormatError


class Checker:
    def __init__(self, path: str):
        self.path = str(path)

    def fail(self, where: str, problem: str):
        raise FormatError(self.path, None, f"{where}: {problem}")

    def dict_(self, x, where: str, keys=()) -> dict:
        if not isinstance(x, dict):
            self.fail(where, f"must be a JSON object, got {type(x).__name__}")
        missing = [k for k in keys if k not in x]
        if missing:
            self.fail(where, f"needs {', '.join(repr(k) for k in missing)} (has {sorted(x)})")
        return x

    def list_(self, x, where: str) -> list:
        if not isinstance(x, list):
            self.fail(where, f"must be a JSON list, got {type(x).__name__}")
        return x

    def number(self, x, where: str, lo: float | None = None) -> float:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            self.fail(where, f"must be a number, got {type(x).__name__} {x!r}")
        if not math.isfinite(x):
            self.fail(where, f"must be finite, got {x}")
        if lo is not None and x < lo:
            self.fail(where, f"must be >= {lo}, got {x}")
        return float(x)

    def integer(self, x, where: str) -> int:
        if isinstance(x, bool) or not isinstance(x, int):
            self.fail(where, f"must be an integer id, got {type(x).__name__} {x!r}")
        return x

    def xywh(self, x, where: str) -> list[float]:
        if not isinstance(x, list) or len(x) != 4:
            self.fail(where, f"must be [x, y, width, height] (4 numbers), got {x!r}")
        return [self.number(x[0], where + "[0]"), self.number(x[1], where + "[1]"),
                self.number(x[2], where + "[2] (width)", 0), self.number(x[3], where + "[3] (height)", 0)]


def check_coco_results(data, path: str) -> list:
    """``[{image_id, category_id?, bbox: [x, y, w, h], score}]`` with finite values, w, h >= 0."""
    c = Checker(path)
    c.list_(data, "top level (a COCO results file is a list of detections)")
    for i, d in enumerate(data):
        w = f"[{i}]"
        c.dict_(d, w, ("image_id", "bbox", "score"))
        c.integer(d["image_id"], w + ".image_id")
        if "category_id" in d:
            c.integer(d["category_id"], w + ".category_id")
        c.xywh(d["bbox"], w + ".bbox")
        c.number(d["score"], w + ".score")
    return data


def check_coco_gt(data, path: str, kaist: bool = False) -> dict:
    """COCO (or the COCO-like KAIST) ground truth: images with ids, annotations that name an image,
    a category, a box and (COCO) an area."""
    c = Checker(path)
    c.dict_(data, "top level", ("images", "annotations") if kaist else ("images", "annotations", "categories"))
    ids = set()
    for i, im in enumerate(c.list_(data["images"], "images")):
        c.dict_(im, f"images[{i}]", ("id",))
        ids.add(c.integer(im["id"], f"images[{i}].id"))
    cats = set()
    for i, cat in enumerate(c.list_(data.get("categories", []), "categories")):
        c.dict_(cat, f"categories[{i}]", ("id",))
        cats.add(c.integer(cat["id"], f"categories[{i}].id"))
    need = ("image_id", "bbox") if kaist else ("id", "image_id", "category_id", "bbox", "area")
    for i, a in enumerate(c.list_(data["annotations"], "annotations")):
        w = f"annotations[{i}]"
        c.dict_(a, w, need)
        if c.integer(a["image_id"], w + ".image_id") not in ids:
            c.fail(w + ".image_id", f"{a['image_id']} is not the id of any image")
        c.xywh(a["bbox"], w + ".bbox")
        if "area" in a:
            c.number(a["area"], w + ".area", 0)
        if "height" in a:
            c.number(a["height"], w + ".height", 0)
        if not kaist:
            c.integer(a["id"], w + ".id")
            if c.integer(a["category_id"], w + ".category_id") not in cats:
                c.fail(w + ".category_id", f"{a['category_id']} is not in categories {sorted(cats)}")
    return data
