"""The fleet's capture pool: capture folders from many robots, verified, de-duplicated, indexed.

Layout::

    POOL/pool.sqlite                     the index (one row per record; provenance, scores, thumbnails)
    POOL/records/<robot>/<record id>/    the record's files, as the robot wrote them

Why SQLite: it is in the standard library, a single file, transactional (an interrupted merge
rolls back to the last commit) and answers the selection's queries over 10^5-10^6 rows in
bounded memory. When one machine is not enough, the records go to object storage (S3 / GCS,
the folder layout unchanged) and this table to a database that already scales (PostgreSQL,
or a warehouse such as BigQuery / DuckDB over Parquet); the selection is then a query there.

Merge, per record: verify it (record.json readable and of a known capture format, its files
present and decodable, sizes as recorded); drop it if it is a near-duplicate of a record
already in the pool from any robot (64-bit difference hash of the visible thumbnail, banded
into four 16-bit keys so that candidates are found through an index, confirmed by the mean
absolute difference of the visible and thermal thumbnails); else copy its folder in under a
temporary name (hard links where it can: record files are never changed in place), rename it into
place and index it. Rows are committed in batches, after
their folders are in place; at every open, folders without a row (a merge killed between
the rename and the commit) and temporary folders are removed, so the pool is always valid,
and merging the same sources again adds only what is missing.

Robot ids: each writer session (the 8-hex token inside every record id) of one robot covers
a span of time; two sessions of the same id that overlap in time are two robots sharing an
id. That robot folder is refused (one line naming both sources) and ``--rename SRC=ID`` fixes it.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import sqlite3
import tarfile
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ms_perception.core import jsonio, selection
from ms_perception.core.capture import CAPTURE_FORMAT, CAPTURE_SCORES, MANIFEST, area_thumbnail, gray_thumbnail, sanitize_id

POOL_FORMAT = 1
DB_NAME = "pool.sqlite"
RECORDS = "records"
BATCH = 500
HAMMING_MAX = 3                   # difference-hash bits; <= 3 guarantees one equal 16-bit band (pigeonhole)
DUPLICATE_MAD = 2.0               # mean |difference| of 32x24 thumbnails (0-255) below which frames are the same
_ID = re.compile(r"^\d{20}_([0-9a-f]{8})\d{6}$")
ARCHIVES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records(
    key TEXT PRIMARY KEY, robot TEXT NOT NULL, robot_reported TEXT, record_id TEXT NOT NULL, session TEXT,
    stamp_ns INTEGER NOT NULL, score REAL, entropy REAL, model_hash TEXT, model TEXT, task TEXT,
    detections INTEGER, bytes INTEGER, dhash INTEGER, b0 INTEGER, b1 INTEGER, b2 INTEGER, b3 INTEGER,
    thumb_v BLOB, thumb_t BLOB, source TEXT, merged_unix REAL, status TEXT NOT NULL DEFAULT 'new',
    labeled_in TEXT, frame_scores TEXT);
CREATE INDEX IF NOT EXISTS records_b0 ON records(b0);
CREATE INDEX IF NOT EXISTS records_b1 ON records(b1);
CREATE INDEX IF NOT EXISTS records_b2 ON records(b2);
CREATE INDEX IF NOT EXISTS records_b3 ON records(b3);
CREATE INDEX IF NOT EXISTS records_robot ON records(robot, stamp_ns);
CREATE INDEX IF NOT EXISTS records_status ON records(status);
CREATE TABLE IF NOT EXISTS dropped(key TEXT PRIMARY KEY, reason TEXT NOT NULL, of_key TEXT, source TEXT);
CREATE TABLE IF NOT EXISTS sessions(robot TEXT NOT NULL, session TEXT NOT NULL, source TEXT NOT NULL,
    first_ns INTEGER NOT NULL, last_ns INTEGER NOT NULL, PRIMARY KEY(robot, session));
"""


class PoolError(ValueError):
    """A pool that cannot be used (wrong version, not a pool); the message names the fix."""


@dataclass
class MergeReport:
    sources: int = 0
    added: int = 0
    already: int = 0                  # in the pool already (or dropped before): merging again adds nothing
    duplicates: int = 0               # near-identical to a record in the pool
    invalid: int = 0                  # missing / corrupt / unknown format: skipped, one line each
    refused_robots: int = 0           # robot folders refused whole (an id used by two robots)
    added_by_robot: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)

    def problem(self, line: str) -> None:
        self.problems.append(line)

    def summary(self) -> str:
        robots = ", ".join(f"{r} {n}" for r, n in sorted(self.added_by_robot.items())) or "none"
        return (f"merge: {self.sources} source(s): added {self.added} ({robots}), already in the pool "
                f"{self.already}, near-duplicates dropped {self.duplicates}, invalid skipped {self.invalid}, "
                f"robot folders refused {self.refused_robots}")


# ----------------------------------------------------------------------------- thumbnails


def thermal_thumbnail(thermal: np.ndarray) -> np.ndarray:
    """32x24 thumbnail of a thermal image of any depth, stretched to 0-255 (NaN as the minimum)."""
    t = np.asarray(thermal, np.float32)
    if t.ndim == 3:
        t = t.mean(2)
    finite = np.isfinite(t)
    if not finite.any():
        return np.zeros((24, 32), np.float32)
    lo, hi = float(t[finite].min()), float(t[finite].max())
    t = np.where(finite, t, lo)
    small = area_thumbnail(t)
    return ((small - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(small)).astype(np.float32)


def difference_hash(thumb: np.ndarray) -> int:
    """64-bit difference hash (9x8 gray; bit = a pixel brighter than its left neighbour), as a signed int64."""
    small = cv2.resize(thumb, (9, 8), interpolation=cv2.INTER_AREA)
    bits = (small[:, 1:] > small[:, :-1]).reshape(-1)
    value = int(np.packbits(bits).view(">u8")[0])
    return value - (1 << 64) if value >= 1 << 63 else value


def _bands(h: int) -> tuple[int, int, int, int]:
    u = h & ((1 << 64) - 1)
    return tuple((u >> (16 * i)) & 0xFFFF for i in range(4))


def _hamming(a: int, b: int) -> int:
    return bin((a ^ b) & ((1 << 64) - 1)).count("1")


# -------------------------------------------------------------------------------- records


def read_record(folder: Path) -> dict:
    """record.json of a capture record, checked; raises ValueError naming what is wrong and the fix."""
    try:
        meta = json.loads((folder / "record.json").read_text())
    except FileNotFoundError:
        raise ValueError("record.json is missing (an incomplete copy); copy the record folder again") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"record.json cannot be read ({exc}); copy the record folder again") from None
    if not isinstance(meta, dict):
        raise ValueError("record.json is not an object; copy the record folder again")
    version = meta.get("capture_format", 1)
    if not isinstance(version, int) or version > CAPTURE_FORMAT:
        raise ValueError(f"written in capture format {version!r}, this ms_perception reads up to {CAPTURE_FORMAT}; "
                         "upgrade ms_perception on this machine to merge it")
    for key, kind in (("id", str), ("stamp_ns", int), ("files", list)):
        if not isinstance(meta.get(key), kind):
            raise ValueError(f"record.json lacks {key!r} ({kind.__name__}); it is not a capture record of "
                             "ms_perception (or a damaged one): leave it out")
    if meta["id"] != folder.name:
        raise ValueError(f"record.json names the record {meta['id']!r}, not its folder; the folder was renamed: "
                         "rename it back")
    return meta


def _decode(folder: Path, name: str, flags=cv2.IMREAD_UNCHANGED) -> np.ndarray:
    p = folder / name
    if not p.exists():
        raise ValueError(f"{name} is missing; copy the record folder again")
    if name.endswith(".npy"):
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{name} is corrupt ({exc}); copy the record folder again") from None
    img = cv2.imdecode(np.fromfile(str(p), np.uint8), flags)
    if img is None:
        raise ValueError(f"{name} is corrupt (cannot be decoded); copy the record folder again")
    return img


def load_images(folder: Path, meta: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """(visible RGB uint8, thermal as stored or None) of a record, checked against record.json."""
    files = set(meta["files"])
    if "visible.png" not in files:
        raise ValueError("the record has no visible.png; it is not a capture record of ms_perception")
    vis = _decode(folder, "visible.png", cv2.IMREAD_COLOR)
    if meta.get("visible_hw") and list(vis.shape[:2]) != list(meta["visible_hw"]):
        raise ValueError(f"visible.png is {vis.shape[1]}x{vis.shape[0]}, record.json says "
                         f"{meta['visible_hw'][1]}x{meta['visible_hw'][0]}; copy the record folder again")
    th = None
    for name in ("thermal.png", "thermal.npy"):
        if name in files:
            th = _decode(folder, name)
            if meta.get("thermal_hw") and list(th.shape[:2]) != list(meta["thermal_hw"]):
                raise ValueError(f"{name} is {th.shape[1]}x{th.shape[0]}, record.json says "
                                 f"{meta['thermal_hw'][1]}x{meta['thermal_hw'][0]}; copy the record folder again")
    for name in files - {"visible.png", "thermal.png", "thermal.npy"}:
        if not (folder / name).exists():
            raise ValueError(f"{name} is missing; copy the record folder again")
    return cv2.cvtColor(vis, cv2.COLOR_BGR2RGB), th


# ------------------------------------------------------------------------------- sources


def _is_robot_dir(d: Path) -> bool:
    if (d / MANIFEST).exists():
        return True
    return any((c / "record.json").exists() for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))


def robot_dirs(root: Path) -> list[Path]:
    """The robot folders of a capture source: the folder itself, its sub-folders (a capture root
    holding one folder per robot), or the same one level down in an archive's single top folder."""
    for _ in range(3):
        if _is_robot_dir(root):
            return [root]
        subs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        found = [d for d in subs if _is_robot_dir(d)]
        if found:
            return found
        if len(subs) != 1:
            return []
        root = subs[0]
    return []


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link where the source is on the same file system (record files are written once and
    never changed in place: the robot's eviction unlinks them), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _safe_extract(archive: Path, dest: Path) -> None:
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if name.startswith("/") or ".." in Path(name).parts:
                    raise ValueError(f"{archive}: member {name!r} points outside the archive; not extracted")
            z.extractall(dest)
        return
    with tarfile.open(archive) as t:
        if hasattr(tarfile, "data_filter"):
            t.extractall(dest, filter="data")
            return
        for m in t.getmembers():
            if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in Path(m.name).parts:
                raise ValueError(f"{archive}: member {m.name!r} is a link or points outside the archive; not extracted")
        t.extractall(dest)


# ----------------------------------------------------------------------------------- pool


class Pool:
    def __init__(self, root: str | Path, create: bool = False):
        self.root = Path(root)
        db = self.root / DB_NAME
        if not db.exists():
            if not create:
                raise PoolError(f"{self.root} is not a capture pool (no {DB_NAME}); make one with "
                                "`ms-perception captures merge SRC... --out POOL`")
            self.root.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(db), isolation_level=None)   # transactions are explicit
        self.db.executescript(_SCHEMA)
        # pools merged before the capture records held every frame score: add the column (empty for them)
        if "frame_scores" not in {r[1] for r in self.db.execute("PRAGMA table_info(records)")}:
            self.db.execute("ALTER TABLE records ADD COLUMN frame_scores TEXT")
        row = self.db.execute("SELECT value FROM meta WHERE key='pool_format'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES('pool_format', ?)", (str(POOL_FORMAT),))
        elif int(row[0]) > POOL_FORMAT:
            raise PoolError(f"{db}: pool format {row[0]} is newer than this ms_perception reads ({POOL_FORMAT}); "
                            "upgrade ms_perception")
        (self.root / RECORDS).mkdir(exist_ok=True)
        self._cleanup()

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- layout
    def record_dir(self, key: str) -> Path:
        robot, rid = key.split("/", 1)
        return self.root / RECORDS / robot / rid

    def _cleanup(self) -> None:
        """Temporary folders and folders without a row (a merge killed before its commit)."""
        for tmp in self.root.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        known = None
        for robot in (self.root / RECORDS).iterdir():
            if not robot.is_dir():
                continue
            for d in robot.iterdir():
                if d.name.startswith(".tmp-"):
                    shutil.rmtree(d, ignore_errors=True)
                    continue
                if known is None:
                    known = {k for (k,) in self.db.execute("SELECT key FROM records")}
                if f"{robot.name}/{d.name}" not in known:
                    shutil.rmtree(d, ignore_errors=True)

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    def counts(self) -> dict:
        out = dict(self.db.execute("SELECT status, COUNT(*) FROM records GROUP BY status").fetchall())
        out["robots"] = dict(self.db.execute("SELECT robot, COUNT(*) FROM records GROUP BY robot").fetchall())
        out["dropped"] = dict(self.db.execute("SELECT reason, COUNT(*) FROM dropped GROUP BY reason").fetchall())
        return out

    def row(self, key: str) -> dict | None:
        cur = self.db.execute("SELECT * FROM records WHERE key=?", (key,))
        r = cur.fetchone()
        return None if r is None else dict(zip([c[0] for c in cur.description], r))

    def candidates(self, status: str = "new", score: str = "inconsistency") -> dict[str, np.ndarray]:
        """Columns of the records to choose from, streamed from the index (no record file is read).
        ``score``: which per-frame score fills the "score" column (``CAPTURE_SCORES``): the record's image
        inconsistency, or one of the detection-level scores its robot computed (NaN where it did not)."""
        keys, robots, stamps, scores, entropies = [], [], [], [], []
        cur = self.db.execute("SELECT key, robot, stamp_ns, score, entropy, frame_scores FROM records WHERE status=? "
                              "ORDER BY robot, stamp_ns, key", (status,))
        while True:
            rows = cur.fetchmany(10000)
            if not rows:
                break
            for k, r, s, sc, en, fs in rows:
                keys.append(k)
                robots.append(r)
                stamps.append(s)
                if score != "inconsistency":
                    sc = json.loads(fs).get(score) if fs else None
                scores.append(np.nan if sc is None else sc)
                entropies.append(np.nan if en is None else en)
        return {"key": np.asarray(keys, object), "robot": np.asarray(robots, object),
                "stamp_ns": np.asarray(stamps, np.int64), "score": np.asarray(scores, np.float64),
                "entropy": np.asarray(entropies, np.float64)}

    def mark(self, keys: list[str], status: str, labeled_in: str | None = None) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("UPDATE records SET status=?, labeled_in=? WHERE key=?",
                            [(status, labeled_in, k) for k in keys])
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------ merge
    def merge(self, sources: list[str | Path], rename: dict[str, str] | None = None,
              duplicate_mad: float = DUPLICATE_MAD, log=print) -> MergeReport:
        rename = {str(Path(k)): sanitize_id(v) for k, v in (rename or {}).items()}
        report = MergeReport()
        for src in sources:
            src_path = Path(src)
            report.sources += 1
            label = str(src_path)
            if not src_path.exists():
                report.problem(f"{label}: no such folder or archive; check the path")
                continue
            tmp = None
            try:
                if src_path.is_file():
                    if not src_path.name.endswith(ARCHIVES):
                        report.problem(f"{label}: not a capture folder or an archive ({', '.join(ARCHIVES)})")
                        continue
                    tmp = self.root / f".tmp-extract-{uuid.uuid4().hex[:8]}"
                    tmp.mkdir()
                    try:
                        _safe_extract(src_path, tmp)
                    except (OSError, ValueError, tarfile.TarError, zipfile.BadZipFile) as exc:
                        report.problem(f"{label}: the archive cannot be read ({exc}); copy it from the robot again")
                        continue
                    base = tmp
                else:
                    base = src_path
                dirs = robot_dirs(base)
                if not dirs:
                    report.problem(f"{label}: holds no capture records (no {MANIFEST} or record folders); "
                                   "give the capture folder of a robot, or the folder that holds them")
                    continue
                for d in dirs:
                    self._merge_robot(d, label, rename.get(label), duplicate_mad, report)
            finally:
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
        for line in report.problems:
            log(line)
        return report

    def _merge_robot(self, d: Path, source: str, robot_override: str | None, mad: float, report: MergeReport) -> None:
        where = f"{source}:{d.name}" if d.name != Path(source).name else source
        listed, bad_lines = set(), 0
        if (d / MANIFEST).exists():
            for line in (d / MANIFEST).read_text(errors="replace").splitlines():
                if not line.strip():
                    continue
                try:
                    e = json.loads(line)
                    listed.add(e["id"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    bad_lines += 1
        if bad_lines:
            report.problem(f"{where}/{MANIFEST}: {bad_lines} line(s) are not record entries (another version or "
                           "damaged); the record folders themselves are merged")
        folders = {c.name: c for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")}
        for missing in sorted(listed - set(folders)):
            report.invalid += 1
            report.problem(f"{where}/{missing}: listed in the manifest but its folder is missing; copy it from the "
                           "robot again")
        metas = []          # (folder, id, stamp, robot id it reports): small, the record.json is read again below
        for name in sorted(folders):
            try:
                m = read_record(folders[name])
                metas.append((folders[name], m["id"], m["stamp_ns"], m.get("robot_id")))
            except ValueError as exc:
                report.invalid += 1
                report.problem(f"{where}/{name}: {exc}")
        if not metas:
            return
        reported = {m[3] for m in metas}
        robot = robot_override or sanitize_id(next(iter(reported)) if len(reported) == 1 and None not in reported
                                              else d.name)
        # two robots under one id: sessions of the id that overlap in time
        spans: dict[str, list[int]] = {}
        for _, rid, stamp, _ in metas:
            match = _ID.match(rid)
            s = match.group(1) if match else "-"
            lo, hi = spans.get(s, [stamp, stamp])
            spans[s] = [min(lo, stamp), max(hi, stamp)]
        for s, (lo, hi) in spans.items():
            clash = self.db.execute("SELECT session, source FROM sessions WHERE robot=? AND session!=? AND first_ns<=? "
                                    "AND last_ns>=? LIMIT 1", (robot, s, hi, lo)).fetchone()
            if clash and s != "-" and clash[0] != "-":
                report.refused_robots += 1
                report.problem(f"{where}: robot id {robot!r} is used by two robots (its session {s} and session "
                               f"{clash[0]} from {clash[1]} captured at the same times); nothing of it was merged: "
                               f"merge it again with --rename {source}=NEW_ID")
                return
        for s, (lo, hi) in spans.items():
            self.db.execute("INSERT INTO sessions VALUES(?,?,?,?,?) ON CONFLICT(robot, session) DO UPDATE SET "
                            "first_ns=min(first_ns, excluded.first_ns), last_ns=max(last_ns, excluded.last_ns)",
                            (robot, s, source, lo, hi))
        dest_robot = self.root / RECORDS / robot
        dest_robot.mkdir(parents=True, exist_ok=True)
        pending = 0
        self.db.execute("BEGIN")
        try:
            for folder, rid, _, _ in metas:
                key = f"{robot}/{rid}"
                if self.db.execute("SELECT 1 FROM records WHERE key=? UNION ALL SELECT 1 FROM dropped WHERE key=?",
                                   (key, key)).fetchone():
                    report.already += 1
                    continue
                try:
                    meta = read_record(folder)
                    vis, th = load_images(folder, meta)
                except ValueError as exc:
                    report.invalid += 1
                    report.problem(f"{where}/{folder.name}: {exc}")
                    continue
                tv = gray_thumbnail(vis)
                tt = thermal_thumbnail(th) if th is not None else None
                h = difference_hash(tv)
                dup = self._duplicate_of(h, tv, tt, mad)
                if dup is not None:
                    self.db.execute("INSERT INTO dropped VALUES(?,?,?,?)", (key, "near_duplicate", dup, source))
                    report.duplicates += 1
                    pending += 1
                    continue
                tmp = dest_robot / f".tmp-{meta['id']}"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(folder, tmp, copy_function=_link_or_copy)
                os.replace(tmp, dest_robot / meta["id"])
                preds = meta.get("predictions") or {}
                extra = meta.get("extra") or {}
                size = sum(f.stat().st_size for f in (dest_robot / meta["id"]).iterdir())
                score = meta.get("score")
                self.db.execute(
                    "INSERT INTO records(key, robot, robot_reported, record_id, session, stamp_ns, score, entropy, "
                    "model_hash, model, task, detections, bytes, dhash, b0, b1, b2, b3, thumb_v, thumb_t, source, "
                    "merged_unix, frame_scores) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (key, robot, meta.get("robot_id"), meta["id"],
                     (_ID.match(meta["id"]).group(1) if _ID.match(meta["id"]) else "-"), int(meta["stamp_ns"]),
                     None if score is None else float(score),
                     None if preds.get("entropy") is None else float(preds["entropy"]), meta.get("model_hash"),
                     extra.get("model"), extra.get("task"), len(preds.get("detections") or []), size, h, *_bands(h),
                     tv.astype(np.uint8).tobytes(), None if tt is None else tt.astype(np.uint8).tobytes(), source,
                     time.time(), _frame_scores_json(preds.get("frame_scores"))))
                report.added += 1
                report.added_by_robot[robot] = report.added_by_robot.get(robot, 0) + 1
                pending += 1
                if pending >= BATCH:
                    self.db.execute("COMMIT")
                    self.db.execute("BEGIN")
                    pending = 0
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            self._cleanup()
            raise

    def _duplicate_of(self, h: int, tv: np.ndarray, tt: np.ndarray | None, mad: float) -> str | None:
        b = _bands(h)
        rows = self.db.execute("SELECT key, dhash, thumb_v, thumb_t FROM records WHERE b0=? OR b1=? OR b2=? OR b3=?",
                               b).fetchall()
        for key, other, bv, bt in rows:
            if _hamming(h, other) > HAMMING_MAX:
                continue
            if np.abs(np.frombuffer(bv, np.uint8).reshape(24, 32).astype(np.float32) - np.rint(tv)).mean() >= mad:
                continue
            if tt is not None and bt is not None and \
                    np.abs(np.frombuffer(bt, np.uint8).reshape(24, 32).astype(np.float32) - np.rint(tt)).mean() >= mad:
                continue
            return key
        return None


def _frame_scores_json(fs) -> str | None:
    """A record's ``predictions.frame_scores`` for the index: finite numbers under known names, or None."""
    if not isinstance(fs, dict):
        return None
    keep = {k: float(v) for k, v in fs.items() if k in CAPTURE_SCORES and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}
    return jsonio.dumps(keep, sort_keys=True) if keep else None


def select_records(pool: Pool, budget: int, strategy: str, seed: int = 0, bucket_s: float = 600.0,
                   score: str = "inconsistency") -> tuple[list[str], int]:
    """The ``budget`` pool records (not yet labeled) to label next, by the shared strategies
    (:mod:`ms_perception.core.selection`); returns (keys, number of candidates). ``score``: the per-frame
    score the ``inconsistency`` and ``diverse`` strategies rank by (``CAPTURE_SCORES``; default the
    paper's image inconsistency)."""
    if score not in CAPTURE_SCORES:
        raise PoolError(f"unknown score {score!r}; valid: {', '.join(CAPTURE_SCORES)}")
    if score != "inconsistency" and strategy not in ("inconsistency", "diverse"):
        raise PoolError(f"--score {score} ranks the inconsistency and diverse strategies; {strategy} does not "
                        "rank by it (leave --score out)")
    c = pool.candidates("new", score)
    n = len(c["key"])
    if n == 0:
        return [], 0
    scores = c["entropy"] if strategy == "entropy" else c["score"]
    if strategy != "random" and not np.isfinite(scores).any():
        what = ("an entropy" if strategy == "entropy" else "an inconsistency score" if score == "inconsistency"
                else f"a {score} score")
        raise PoolError(f"no record in the pool has {what} (captured by a model without it, or by an older "
                        "version); choose --strategy random")
    if bucket_s <= 0:
        raise PoolError(f"--bucket-s must be > 0, got {bucket_s}")
    idx = selection.select(strategy, budget, scores=scores, rng=np.random.default_rng(seed), groups=c["robot"],
                           buckets=c["stamp_ns"] // int(bucket_s * 1e9))
    return [str(k) for k in c["key"][idx]], n
