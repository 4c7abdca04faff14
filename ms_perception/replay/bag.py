"""rosbag2 reading and writing with ``rosbags`` (no ROS install needed).

Images are ``sensor_msgs/msg/Image``. Writing a synthetic sequence makes a bag like the
ones ``ros2 bag record`` produces on a rig: visible ``rgb8``, thermal ``mono16`` (raw
counts) at the thermal camera's own resolution, header stamps with the thermal offset and
jitter of the generator, log times equal to the stamps plus a small transport delay.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ms_perception.core import jsonio
from ms_perception.core.atomic import atomic_write
from ms_perception.core.frames import Frame

IMAGE = "sensor_msgs/msg/Image"
_DTYPES = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
           "mono8": (np.uint8, 1), "mono16": (np.uint16, 1), "16UC1": (np.uint16, 1), "32FC1": (np.float32, 1),
           "8UC1": (np.uint8, 1), "8UC3": (np.uint8, 3)}


class BagError(ValueError):
    """The bag cannot be replayed as asked; the message names the fix."""


def _typestore():
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_HUMBLE)


def image_msg(ts, frame: Frame):
    """numpy Frame -> sensor_msgs/msg/Image (rosbags dataclass)."""
    Image = ts.types[IMAGE]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    a = np.ascontiguousarray(frame.data)
    h, w = a.shape[:2]
    ch = 1 if a.ndim == 2 else a.shape[2]
    step = w * ch * a.dtype.itemsize
    return Image(header=Header(stamp=Time(sec=int(frame.stamp_ns // 10**9), nanosec=int(frame.stamp_ns % 10**9)),
                               frame_id=frame.frame_id),
                 height=h, width=w, encoding=frame.encoding, is_bigendian=0, step=step,
                 data=np.frombuffer(a.tobytes(), np.uint8))


def frame_from_msg(msg) -> Frame:
    """sensor_msgs/msg/Image -> Frame, honouring step (row padding) and endianness."""
    enc = msg.encoding
    if enc not in _DTYPES:
        raise BagError(f"image encoding {enc!r} cannot be replayed; supported: {sorted(_DTYPES)}")
    if msg.width == 0 or msg.height == 0:
        raise BagError(f"image message is empty ({msg.width}x{msg.height} {enc})")
    dtype, ch = _DTYPES[enc]
    dt = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    row = msg.width * ch * dt.itemsize
    raw = np.asarray(msg.data, np.uint8)
    if msg.step < row or raw.size < msg.step * msg.height:
        raise BagError(f"image message is truncated or has a bad step ({msg.step} for {msg.width}x{msg.height} {enc})")
    rows = raw[: msg.step * msg.height].reshape(msg.height, msg.step)[:, :row]
    a = np.ascontiguousarray(rows).view(dt).reshape(msg.height, msg.width, ch) if ch > 1 else \
        np.ascontiguousarray(rows).view(dt).reshape(msg.height, msg.width)
    a = a.astype(dt.newbyteorder("="), copy=False)
    stamp = int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)
    return Frame(a, stamp, "mono8" if enc == "8UC1" else "rgb8" if enc == "8UC3" else enc, msg.header.frame_id)


def write_bag(path: str | Path, streams: Iterable[tuple[str, Frame, int]], storage: str = "mcap") -> Path:
    """Write (topic, frame, log_time_ns) records to a new rosbag2 folder at ``path``."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    path = Path(path)
    if path.exists():
        raise BagError(f"{path} exists; rosbag2 writes a new folder (choose another path or delete it)")
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3, "db3": StoragePlugin.SQLITE3}.get(storage)
    if plugin is None:
        raise BagError(f"storage {storage!r} is not one of mcap, sqlite3")
    ts = _typestore()
    conns = {}
    with Writer(path, version=8, storage_plugin=plugin) as w:
        for topic, frame, log_ns in streams:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, IMAGE, typestore=ts)
            w.write(conns[topic], int(log_ns), ts.serialize_cdr(image_msg(ts, frame), IMAGE))
    return path


@dataclass
class ReadReport:
    """What a replay read, skipped and could not read; filled in by :func:`read_frames` as it goes."""
    messages: dict = field(default_factory=dict)     # topic -> messages read
    malformed: dict = field(default_factory=dict)    # topic -> {"count", "examples": [{"stamp_ns", "reason"}]}
    expected: dict = field(default_factory=dict)     # topic -> messages the bag's index lists
    damage: str = ""                                 # where and how reading stopped early ("" = read to the end)

    def skip(self, topic: str, stamp_ns: int | None, reason: str) -> None:
        m = self.malformed.setdefault(topic, {"count": 0, "examples": []})
        m["count"] += 1
        if len(m["examples"]) < EXAMPLES:
            m["examples"].append({"stamp_ns": stamp_ns, "reason": reason})

    @property
    def unread(self) -> dict:
        """topic -> messages the index lists that were never read (a damaged region read silently short)."""
        return {t: n - self.messages.get(t, 0) for t, n in self.expected.items() if n > self.messages.get(t, 0)}

    def to_dict(self) -> dict:
        return {"messages": self.messages, "malformed_frames": self.malformed, "unread_messages": self.unread,
                "damage": self.damage}


EXAMPLES = 5   # examples kept per skipped kind (the counts are exact)


def _open(path):
    from rosbags.rosbag2 import Reader
    p = Path(path)
    if not p.exists():
        raise BagError(f"bag not found: {p}")
    ros1 = p.is_file() and p.read_bytes()[:13] == b"#ROSBAG V2.0\n"
    if ros1 or (p.suffix == ".bag" and p.is_file()):
        raise BagError(f"{p}: this is a ROS 1 bag; convert it to rosbag2 first: `rosbags-convert --src {p} --dst "
                       f"{p.with_suffix('')}` (rosbags-convert comes with the rosbags package), then replay the folder")
    try:
        r = Reader(p)
        r.open()
    except Exception as exc:  # rosbags raises ReaderError and storage-specific errors
        text = str(exc)
        if "end magic" in text.lower():   # the mcap footer magic is written last, when the recorder closes
            raise BagError(f"{p}: the .mcap file is truncated ({text}): the recorder was stopped without closing it "
                           "(killed, power loss, disk full). Salvage it with the mcap CLI: `mcap recover IN.mcap -o "
                           "OUT.mcap`, then replay OUT.mcap") from None
        raise BagError(f"{p}: not a readable rosbag2 recording ({type(exc).__name__}: {exc}); a bag is the folder "
                       "with metadata.yaml (or a single .mcap/.db3 file)") from None
    return r


def _stamp(msg) -> int | None:
    try:
        return int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)
    except (AttributeError, TypeError, ValueError):
        return None


def read_frames(path: str | Path, visible_topic: str, thermal_topic: str | None,
                report: ReadReport | None = None) -> Iterator[tuple[str, Frame]]:
    """Yield ("visible"|"thermal", Frame) in recording (log time) order.

    A malformed image (bad step, short data, zero size, unknown encoding, undecodable message) is
    skipped and counted in ``report`` with its topic, stamp and reason. Damage that stops the reader
    ends the iteration early with ``report.damage`` naming where; messages the bag's index lists but
    the reader never returned are in ``report.unread``. Problems with the request itself (no such
    bag or topic, the same topic twice, a ROS 1 bag) raise BagError before any frame.
    """
    report = report if report is not None else ReadReport()
    if thermal_topic and thermal_topic == visible_topic:
        raise BagError(f"the visible and thermal topics are the same ({visible_topic!r}); set --visible-topic and "
                       "--thermal-topic to the two cameras' topics")
    ts = _typestore()
    r = _open(path)
    try:
        topics = {c.topic: c.msgtype for c in r.connections}
        wanted = {visible_topic: "visible"} | ({thermal_topic: "thermal"} if thermal_topic else {})
        listing = ", ".join(f"{t} [{m}]" for t, m in sorted(topics.items())) or "none"
        for topic, stream in wanted.items():
            if topic not in topics:
                raise BagError(f"{path}: no {stream} topic {topic!r} in the bag (set --{stream}-topic); the bag's "
                               f"topics: {listing}")
            if topics[topic] != IMAGE:
                raise BagError(f"{path}: topic {topic!r} is {topics[topic]}, not {IMAGE}; the bag's topics: {listing}")
        conns = [c for c in r.connections if c.topic in wanted]
        for c in conns:
            report.expected[c.topic] = report.expected.get(c.topic, 0) + int(getattr(c, "msgcount", 0) or 0)
            report.messages.setdefault(c.topic, 0)
        last = "before the first message"
        it = r.messages(connections=conns)
        while True:
            try:
                item = next(it)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - the storage plugin raises what its parser raises
                n = sum(report.messages.values())
                report.damage = (f"{path}: the recording is damaged after {n} message(s) ({last}): {type(exc).__name__}: "
                                 f"{exc}; the results below cover the frames before it (salvage an .mcap with "
                                 "`mcap recover IN.mcap -o OUT.mcap`)")
                return
            conn, log_ns, raw = item
            report.messages[conn.topic] += 1
            last = f"last read: {conn.topic} at log time {log_ns}"
            try:
                msg = ts.deserialize_cdr(raw, conn.msgtype)
            except Exception as exc:  # noqa: BLE001 - a damaged message body
                report.skip(conn.topic, None, f"undecodable message at log time {log_ns} ({type(exc).__name__})")
                continue
            try:
                frame = frame_from_msg(msg)
            except BagError as exc:
                report.skip(conn.topic, _stamp(msg), str(exc))
                continue
            yield wanted[conn.topic], frame
    finally:
        r.close()


def write_annotations(path: Path, records: list[dict]) -> None:
    atomic_write(path, jsonio.dumps(records))


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


def prefetch(items: Iterator, depth: int = 8) -> Iterator:
    """Iterate ``items`` on a reader thread, ``depth`` items ahead, so reading and decoding the bag
    overlaps the consumer's work (inference releases the GIL, so does the storage's decompression).
    An exception in the reader is raised in the consumer at the point it happened; when the
    consumer stops early (an error, Ctrl-C, ``close``), the reader is told to stop and joined, so
    the bag is closed before this returns. ``depth`` bounds the frames held in memory."""
    import queue
    import threading
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for x in items:
                if not put(x):
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put(_Raised(exc))
            return
        finally:
            close = getattr(items, "close", None)
            if close is not None and stop.is_set():
                close()          # a generator: runs its finally (the bag is closed) on this thread
        put(_END)

    t = threading.Thread(target=run, name="bag-reader", daemon=True)
    t.start()
    try:
        while True:
            x = q.get()
            if x is _END:
                return
            if isinstance(x, _Raised):
                raise x.exc
            yield x
    finally:
        stop.set()
        t.join()
