"""RBD non-local handle: throughput and IOPS through blocklink's handle, os-brick's, and raw librbd.

One throwaway Ceph cluster (blocklink.testing.ceph: mon + memstore osd on 127.0.0.1), one image,
three long-lived workers (blocklink and raw librbd in the project venv, os-brick in its own venv),
each holding its own open handle on that same image. Every repetition runs each pattern on each
worker in turn, the order rotating, so load from the shared machine falls on all three alike.
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Any, Dict, List, Tuple

from benchmarks.context import REPO, Context, interleave
from benchmarks.model import BLOCKLINK, FLOOR, OSBRICK, Outcome
from benchmarks.worker import Worker

TITLE = "RBD handle I/O"
MiB = 1 << 20
OPS = "benchmarks.rbd_ops"

# (label, pattern, block size)
PATTERNS: List[Tuple[str, str, int]] = [
    ("sequential write, 1 MiB blocks", "seqwrite", MiB),
    ("sequential read, 1 MiB blocks", "seqread", MiB),
    ("sequential write, 4 MiB blocks", "seqwrite", 4 * MiB),
    ("sequential read, 4 MiB blocks", "seqread", 4 * MiB),
    ("random write, 4 KiB", "randwrite", 4096),
    ("random read, 4 KiB", "randread", 4096),
]


def _missing() -> str:
    for tool in ("ceph-mon", "ceph-osd", "ceph", "rbd", "ceph-authtool", "monmaptool"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian ceph-mon/ceph-osd/ceph-common)"
    try:
        import rados  # noqa: F401
        import rbd  # noqa: F401
    except ImportError as e:
        return f"Ceph's Python bindings do not import ({e}); install python3-rados python3-rbd"
    return ""


def run(ctx: Context) -> Outcome:
    out = Outcome("rbd_handle", TITLE)
    why = _missing()
    if why:
        out.skip(why)
        return out
    from blocklink.testing.ceph import CephCluster

    size = (16 if ctx.quick else 64) * MiB
    count = ctx.reps(5000, 300)
    passes = ctx.reps(4, 1)
    reps = ctx.reps(15, 2)
    # 4 KiB random reads are the row closest to the floor (Python's share of a ~150-300 us librbd call) and
    # the one outside load moves most: more rounds of that pattern alone, so its p10-p90 means something
    rand_read_reps = ctx.reps(40, 4)
    # ... and each of its samples is taken in slices, the three paths taking turns every slice (~40 ms
    # each): a burst of outside load then lands on all three, not on whichever path ran during it
    slices = ctx.reps(25, 3)
    cycles = ctx.reps(15, 3)
    logs = ctx.scratch("rbd")
    ctx.log(f"starting a throwaway Ceph cluster; image {size // MiB} MiB, {reps} repetitions")
    cluster = CephCluster.start()
    workers: Dict[str, Worker] = {}
    target: Any = None
    vid = f"bench{uuid.uuid4().hex[:8]}"
    try:
        target = cluster.rbd_target(include_keyring=True)
        target.create_volume(vid, size)
        info = target.initialize_connection(vid).to_dict()
        pythons = {BLOCKLINK: ctx.blocklink_python, OSBRICK: ctx.osbrick_python, FLOOR: ctx.blocklink_python}
        for impl, py in pythons.items():
            workers[impl] = Worker(py, impl, os.path.join(logs, f"worker-{impl}.log"), REPO)
        for impl, w in workers.items():
            w.call(f"{OPS}:connect", impl=impl, info=info)
        # prefill the whole image (reads then hit real objects), then one warm-up pass per path
        workers[FLOOR].call(f"{OPS}:io", pattern="seqwrite", bs=4 * MiB, size=size, seed=7)
        for w in workers.values():
            w.call(f"{OPS}:io", pattern="seqwrite", bs=4 * MiB, size=size, seed=7)
            w.call(f"{OPS}:io", pattern="randread", bs=4096, size=size, count=min(count, 200), seed=3)
        rows = {}
        for label, pattern, _ in PATTERNS:
            seq = pattern.startswith("seq")
            rows[label] = out.row(label, "MiB/s" if seq else "IOPS", higher_is_better=True)
        for r in range(max(reps, rand_read_reps)):
            for label, pattern, bs in PATTERNS:
                if r >= (rand_read_reps if (pattern, bs) == ("randread", 4096) else reps):
                    continue
                if pattern == "randread":
                    for impl, (ops, seconds) in _sliced(workers, r, bs, size, count, slices).items():
                        rows[label].add(impl, ops / seconds)
                    continue
                for impl in _rotate(list(workers), r):
                    res = workers[impl].call(f"{OPS}:io", pattern=pattern, bs=bs, size=size, count=count,
                                             seed=100 + r, passes=passes)
                    if pattern.startswith("seq"):
                        rows[label].add(impl, res["bytes"] / MiB / res["seconds"])
                    else:
                        rows[label].add(impl, res["ops"] / res["seconds"])
            ctx.log(f"rbd repetition {r + 1}/{max(reps, rand_read_reps)} done")
        sums = {impl: w.call(f"{OPS}:checksum", size=size) for impl, w in workers.items()}
        if len(set(sums.values())) != 1:
            raise RuntimeError(f"the three access paths read different data from one image: {sums}")
        for w in workers.values():
            w.call(f"{OPS}:disconnect")
        conn = out.row("connect_volume (new cluster connection + open image)", "ms")
        disc = out.row("disconnect_volume (close image + shut down connection)", "ms")
        for _, impl in interleave(cycles, list(workers)):
            c, d = workers[impl].call(f"{OPS}:connect_cycle", impl=impl, info=info)
            conn.add(impl, c * 1000)
            disc.add(impl, d * 1000)
    finally:
        for w in workers.values():
            w.close()
        if target is not None:
            try:
                target.delete_volume(vid)
            finally:
                target.close()
        cluster.stop()
    out.notes.append(
        f"Image of {size // MiB} MiB (layering only), memstore OSD on 127.0.0.1. os-brick and the floor use "
        f"librbd's defaults (write-around cache, no op timeout); blocklink's handle opens its connection with "
        f"`rbd_cache=false` (it pipelines writes itself and checks every completion) and its connector's "
        f"op timeouts (`rados_osd_op_timeout` = 30 s: no I/O hangs on a dead OSD; librados then arms and "
        f"cancels a timer per op). A sequential sample is {passes} pass(es) over the whole image; a random sample is "
        f"{count} ops at 4 KiB-aligned offsets, from the same seed for every path. Writes end with a flush, inside the timing. "
        f"{reps} repetitions ({rand_read_reps} for the 4 KiB random read, the row nearest its floor), each "
        f"pattern run on the three paths in rotating order; a random-read sample is taken in {slices} slices "
        f"of {max(1, count // slices)} ops, the paths taking turns every slice (outside load then falls on "
        f"all three within a sample). Before timing, the image "
        f"was prefilled and each path made one warm-up pass. After timing, all three paths read the whole "
        f"image and got the same sha256. connect/disconnect: {cycles} cycles each, interleaved, each a new "
        f"cluster connection. floor = raw librbd (`rbd.Image.read/write` at explicit offsets). Connection info "
        f"from blocklink's RbdTarget with the keyring included (cinderlib style), used as is by both "
        f"connectors.")
    return out


def _sliced(workers: Dict[str, Worker], r: int, bs: int, size: int, count: int,
            slices: int) -> Dict[str, Tuple[float, float]]:
    """One random-read sample per path: ``count`` ops in ``slices`` slices (each slice's offsets from
    its own seed, the same for every path), the paths taking turns every slice in rotating order;
    returns path -> (ops, seconds) summed over its slices."""
    per = max(1, count // slices)
    got: Dict[str, Tuple[float, float]] = {impl: (0.0, 0.0) for impl in workers}
    for k in range(slices):
        for impl in _rotate(list(workers), r + k):
            res = workers[impl].call(f"{OPS}:io", pattern="randread", bs=bs, size=size, count=per,
                                     seed=(100 + r) * 1000 + k)
            ops, seconds = got[impl]
            got[impl] = (ops + res["ops"], seconds + res["seconds"])
    return got


def _rotate(items: List[str], k: int) -> List[str]:
    k %= len(items)
    return items[k:] + items[:k]
