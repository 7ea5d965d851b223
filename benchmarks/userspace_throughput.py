"""Userspace attach throughput: the attached file vs direct librbd / libiscsi on the same volume.

One throwaway Ceph (memstore osd) and one tgtd (rdwr backing file), both on 127.0.0.1. For each
volume, sequential write then read of ``size`` bytes in 1 MiB blocks at queue depth 1:

* **userspace file (nbdfuse)**: blocklink's default, O_DIRECT ``pwritev``/``preadv`` on the file
  (FUSE -> nbdfuse -> NBD unix socket -> qemu-storage-daemon -> librbd / libiscsi);
* **userspace file (qsd FUSE)**: qemu-storage-daemon's own FUSE export (1 MiB O_DIRECT requests
  are single FUSE requests, which that export handles correctly; see blocklink.initiator.nbdfuse);
* **direct**: the floor. RBD: python ``rbd.Image.write/read`` (librbd, cache off). iSCSI:
  ``qemu-io`` over libiscsi (one synchronous 1 MiB request at a time), the same initiator code
  qemu-storage-daemon runs, without any export in between.

Every path uses the same volume, prefilled once (untimed) so that no path pays for allocating
storage, in an order rotating every repetition. ``--baseline`` adds the default path once more with
the daemon's malloc tunables removed (:data:`blocklink.initiator.qsd.MALLOC_TUNABLES`), to show
their effect in the same run.

Run on its own (prints a Markdown table)::

    .venv/bin/python -m benchmarks.userspace_throughput --size-mib 256 --reps 3

or through the benchmark runner (``run(ctx)``). Not a timed test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import mmap
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

MiB = 1 << 20
BLOCK = MiB
INITIATOR = "iqn.2024-01.org.blocklink.bench:host"

Result = Dict[str, List[float]]  # "path write"/"path read" -> MiB/s per repetition


def _missing() -> str:
    for tool in ("qemu-storage-daemon", "qemu-img", "nbdfuse", "tgtd", "ceph-mon", "ceph-osd", "rbd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    return ""


# ---------------------------------------------------------------------------------------------- I/O


def file_seq(path: str, size: int) -> Tuple[float, float]:
    """(write MiB/s, read MiB/s): O_DIRECT, 1 MiB blocks, one request at a time."""
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT wants
    buf.write(os.urandom(BLOCK))
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    try:
        t0 = time.perf_counter()
        for off in range(0, size, BLOCK):
            os.pwritev(fd, [buf], off)
        os.fsync(fd)
        w = time.perf_counter() - t0
        t0 = time.perf_counter()
        for off in range(0, size, BLOCK):
            os.preadv(fd, [buf], off)
        r = time.perf_counter() - t0
    finally:
        os.close(fd)
    return size / MiB / w, size / MiB / r


def prefill_file(path: str, size: int) -> None:
    """Write every block once (untimed), so that no measured path pays for allocating storage."""
    data = os.urandom(BLOCK)
    with open(path, "r+b") as f:
        for off in range(0, size, BLOCK):
            f.seek(off)
            f.write(data)
        f.flush()
        os.fsync(f.fileno())


def prefill_rbd(conffile: str, pool: str, image: str, size: int) -> None:
    import rados
    import rbd

    data = os.urandom(BLOCK)
    with rados.Rados(conffile=conffile, rados_id="admin") as cluster:
        with cluster.open_ioctx(pool) as ioctx, rbd.Image(ioctx, image) as img:
            for off in range(0, size, BLOCK):
                img.write(data, off)
            img.flush()


def librbd_seq(conffile: str, pool: str, image: str, size: int) -> Tuple[float, float]:
    import rados
    import rbd

    data = os.urandom(BLOCK)
    with rados.Rados(conffile=conffile, rados_id="admin", conf={"rbd_cache": "false"}) as cluster:
        with cluster.open_ioctx(pool) as ioctx, rbd.Image(ioctx, image) as img:
            t0 = time.perf_counter()
            for off in range(0, size, BLOCK):
                img.write(data, off)
            img.flush()
            w = time.perf_counter() - t0
            t0 = time.perf_counter()
            for off in range(0, size, BLOCK):
                img.read(off, BLOCK)
            r = time.perf_counter() - t0
    return size / MiB / w, size / MiB / r


def qemu_io_seq(image_opts: str, secret_file: Optional[str], size: int) -> Tuple[float, float]:
    """qemu-io (libiscsi in qemu's block layer, no export in between): one synchronous 1 MiB
    request per command; the time is the sum of qemu-io's own per-request timings."""
    base = ["qemu-io"] + (["--object", f"secret,id=s0,file={secret_file},format=raw"] if secret_file else []) + \
        ["--image-opts", image_opts]
    speeds = []
    for op in ("write", "read"):
        cmds = [a for off in range(0, size, BLOCK) for a in ("-c", f"{op} {off} {BLOCK}")]
        out = subprocess.run(base + cmds, capture_output=True, text=True, check=True).stdout
        ops = [float(x) for x in re.findall(r"and ([0-9.]+) ops/sec", out)]
        if len(ops) != size // BLOCK:
            raise RuntimeError(f"qemu-io: expected {size // BLOCK} timings, got {len(ops)}: {out[-200:]!r}")
        speeds.append(size / MiB / sum(1 / o for o in ops))
    return speeds[0], speeds[1]


# ---------------------------------------------------------------------------------------------- setups


Measure = Dict[str, float]  # "write"/"read" MiB/s, and for attached files "attach ms"/"detach ms"


class _GlibcDefaults:
    """An executor that starts qemu-storage-daemon without blocklink's malloc tunables (--baseline)."""

    def __init__(self) -> None:
        from blocklink.executor import ProcessExecutor

        self.inner = ProcessExecutor()

    def run(self, argv: Any, **kw: Any) -> Any:
        env = dict(kw.pop("env", None) or {})
        env.pop("GLIBC_TUNABLES", None)
        return self.inner.run(argv, env=env or None, **kw)


BASELINE = "userspace file (nbdfuse, glibc malloc defaults)"
DEFAULT = "userspace file (nbdfuse)"


def _attached(conn: Any, info: Any, size: int) -> Measure:
    t0 = time.perf_counter()
    dev = conn.connect_volume(info)
    attach = (time.perf_counter() - t0) * 1000
    try:
        w, r = file_seq(dev.path, size)
    finally:
        t0 = time.perf_counter()
        conn.disconnect_volume(info, dev)
        detach = (time.perf_counter() - t0) * 1000
    return {"write": w, "read": r, "attach ms": attach, "detach ms": detach}


def _direct(fn: Callable[[], Tuple[float, float]]) -> Measure:
    w, r = fn()
    return {"write": w, "read": r}


def rbd_paths(work: str, size: int, baseline: bool = False) -> Tuple[Dict[str, Callable[[], Measure]],
                                                                     Callable[[], None]]:
    from blocklink.initiator.userspace import UserspaceRBDConnector
    from blocklink.testing.ceph import CephCluster

    ceph = CephCluster.start(store_bytes=max(4 << 30, 3 * size))
    try:
        ceph.create_image("bench", size)
        prefill_rbd(ceph.conffile, ceph.pool, "bench", size)
        info = ceph.rbd_target(include_keyring=True).initialize_connection("bench-unused").to_dict()
        info["data"]["name"] = f"{ceph.pool}/bench"
        run_dir = os.path.join(work, "rbd")
        paths = {
            DEFAULT: lambda: _attached(UserspaceRBDConnector(run_dir=run_dir), info, size),
            "userspace file (qsd FUSE)": lambda: _attached(
                UserspaceRBDConnector(run_dir=run_dir, file_bridge="qsd"), info, size),
            "direct librbd (python rbd)": lambda: _direct(lambda: librbd_seq(ceph.conffile, ceph.pool, "bench", size)),
        }
        if baseline:
            paths[BASELINE] = lambda: _attached(UserspaceRBDConnector(run_dir=run_dir, executor=_GlibcDefaults()),
                                                info, size)
    except BaseException:
        ceph.stop()
        raise
    return paths, ceph.stop


def iscsi_paths(work: str, size: int, baseline: bool = False) -> Tuple[Dict[str, Callable[[], Measure]],
                                                                       Callable[[], None]]:
    from blocklink.privatefile import create_private
    from blocklink.initiator.userspace import UserspaceISCSIConnector
    from blocklink.testing.tgt import TgtDaemon

    tgt = TgtDaemon.start()
    try:
        os.makedirs(os.path.join(work, "tgt"))
        target = tgt.target(backing_dir=os.path.join(work, "tgt"))
        export = target.create_export("bench", size=size)
        prefill_file(export.device_path, size)
        info = target.initialize_connection("bench", {"host": "bench", "initiator": INITIATOR})
        t = info.targets[0]
        secret = os.path.join(work, "chap.secret")
        assert info.auth_password is not None and info.auth_username is not None
        create_private(secret, info.auth_password.reveal())
        opts = (f"driver=iscsi,transport=tcp,portal={t.portal.address},target={t.iqn},lun={t.lun},"
                f"initiator-name={INITIATOR},user={info.auth_username},password-secret=s0")
        run_dir = os.path.join(work, "iscsi")
        paths = {
            DEFAULT: lambda: _attached(
                UserspaceISCSIConnector(run_dir=run_dir, initiator_name=INITIATOR), info, size),
            "userspace file (qsd FUSE)": lambda: _attached(
                UserspaceISCSIConnector(run_dir=run_dir, initiator_name=INITIATOR, file_bridge="qsd"), info, size),
            "direct libiscsi (qemu-io)": lambda: _direct(lambda: qemu_io_seq(opts, secret, size)),
        }
        if baseline:
            paths[BASELINE] = lambda: _attached(UserspaceISCSIConnector(
                run_dir=run_dir, initiator_name=INITIATOR, executor=_GlibcDefaults()), info, size)
    except BaseException:
        tgt.stop()
        raise

    def stop() -> None:
        os.unlink(secret)
        tgt.stop()
    return paths, stop


def measure(size: int, reps: int, log: Callable[[str], None], baseline: bool = False) -> Dict[str, Result]:
    """{"rbd"|"iscsi": {"<path> write"|"<path> read": [MiB/s, ...]}}, paths interleaved per repetition."""
    out: Dict[str, Result] = {}
    work = tempfile.mkdtemp(prefix="bl-bench.", dir="/run")
    try:
        for proto, setup in (("rbd", rbd_paths), ("iscsi", iscsi_paths)):
            paths, stop = setup(work, size, baseline)
            res: Result = {}
            try:
                names = list(paths)
                for r in range(reps):
                    k = r % len(names)  # rotate the order: outside load falls on every path alike
                    for name in names[k:] + names[:k]:
                        m = paths[name]()
                        for key, value in m.items():
                            res.setdefault(f"{name} {key}", []).append(value)
                        log(f"{proto} rep {r + 1}/{reps} {name}: " + ", ".join(f"{k} {v:.0f}" for k, v in m.items()))
            finally:
                stop()
            out[proto] = res
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def round_ratio(res: Result, path: str, direct: str, op: str) -> float:
    """Median over repetitions of path / direct measured in the same repetition (back to back):
    outside load that drifts during the run cancels out, unlike a ratio of the two medians."""
    return statistics.median(p / d for p, d in zip(res[f"{path} {op}"], res[f"{direct} {op}"]))


def _direct_name(res: Result) -> str:
    return next(k[:-len(" write")] for k in res if k.startswith("direct") and k.endswith(" write"))


def default_ratios(results: Dict[str, Result]) -> Dict[str, Dict[str, float]]:
    """{"rbd"|"iscsi": {"write"|"read": per-repetition ratio default path / direct, median}}."""
    return {proto: {op: round_ratio(res, DEFAULT, _direct_name(res), op) for op in ("write", "read")}
            for proto, res in results.items()}


def markdown(results: Dict[str, Result], size: int, reps: int) -> str:
    lines = [f"Sequential {size // MiB} MiB, 1 MiB blocks, queue depth 1, O_DIRECT on the file; "
             f"median of {reps} (MiB/s); ratio = path / direct in the same repetition, median over "
             "repetitions.", "",
             "| volume | path | write MiB/s | read MiB/s | write ratio | read ratio |",
             "|---|---|---:|---:|---:|---:|"]
    for proto, res in results.items():
        names = [k[:-len(" write")] for k in res if k.endswith(" write")]
        direct = _direct_name(res)
        for n in names:
            w, r = statistics.median(res[f"{n} write"]), statistics.median(res[f"{n} read"])
            lines.append(f"| {proto} | {n} | {w:.0f} | {r:.0f} | {round_ratio(res, n, direct, 'write'):.2f} | "
                         f"{round_ratio(res, n, direct, 'read'):.2f} |")
    lines += ["", "**Default backend (nbdfuse) / direct**, " + "; ".join(
        f"{proto} write {r['write']:.2f}, read {r['read']:.2f}" for proto, r in default_ratios(results).items())
        + " (target: 0.8 each)."]
    lines += ["", "Attach / detach of the userspace file (connect_volume / disconnect_volume), median ms:", "",
              "| volume | path | attach ms | detach ms |", "|---|---|---:|---:|"]
    for proto, res in results.items():
        for key in res:
            if key.endswith(" attach ms"):
                n = key[:-len(" attach ms")]
                lines.append(f"| {proto} | {n} | {statistics.median(res[key]):.0f} | "
                             f"{statistics.median(res[f'{n} detach ms']):.0f} |")
    return "\n".join(lines)


def run(ctx: Any) -> Any:
    """Entry point for the benchmark runner: rows with blocklink (nbdfuse file) vs floor (direct)."""
    from benchmarks.model import BLOCKLINK, FLOOR, Outcome

    out = Outcome("userspace", "userspace attach throughput")
    why = _missing()
    if why:
        out.skip(why)
        return out
    size = (64 if ctx.quick else 256) * MiB
    reps = ctx.reps(3, 1)
    results = measure(size, reps, ctx.log)
    for proto, res in results.items():
        direct = _direct_name(res)
        for op in ("write", "read"):
            row = out.row(f"{proto} sequential {op}, 1 MiB O_DIRECT", "MiB/s", higher_is_better=True,
                          note=f"blocklink = userspace file via nbdfuse; floor = {direct}")
            for v in res[f"{DEFAULT} {op}"]:
                row.add(BLOCKLINK, v)
            for v in res[f"{direct} {op}"]:
                row.add(FLOOR, v)
    out.notes.append(markdown(results, size, reps))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--baseline", action="store_true",
                   help="also run the default path with glibc's malloc defaults in the daemon (before/after)")
    args = p.parse_args(argv)
    why = _missing()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    size = args.size_mib * MiB
    results = measure(size, args.reps, lambda m: print(f"  {m}", file=sys.stderr, flush=True), args.baseline)
    print(markdown(results, size, args.reps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
