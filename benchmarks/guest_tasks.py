"""Benchmark tasks that run INSIDE the real-kernel guest (started by guest.py); print one JSON line.

``python -m benchmarks.guest_tasks lio --n 100 --reps 3``: LioTarget vs rtslib-fb direct.
``python -m benchmarks.guest_tasks iscsi --reps 3 --creps 2 --concurrency 16``: iSCSI attach/detach through
blocklink, os-brick and raw iscsiadm against the same LIO targets (see iscsi_ops.py).
``python -m benchmarks.guest_tasks dmcrypt --mib 128 --reps 5``: sequential throughput through blocklink's
dm-crypt mapping vs the raw device (see dmcrypt_ops.py).
``python -m benchmarks.guest_tasks nova_iscsi --reps 3 --compat-python P``: Nova's LibvirtISCSIVolumeDriver
on the os-brick facade vs the real os-brick (see nova_ops.py).
``python -m benchmarks.guest_tasks nvme --reps 20``: NVMe/TCP connect+disconnect through blocklink and
through nvme-cli against the same nvmet subsystem (see nvme_ops.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

INITIATOR = "iqn.2004-10.org.blocklink:guest"
PORTAL = ("127.0.0.1", 3260)
CONNECTOR = {"host": "blguest", "initiator": INITIATOR, "ip": "127.0.0.1", "platform": "x86_64",
             "os_type": "linux", "multipath": False}
IQN_PREFIX = "iqn.2010-10.org.openstack:"


def modprobe(*mods: str) -> None:
    for m in mods:
        subprocess.run(["modprobe", m], check=True, capture_output=True)


def backing_files(d: str, n: int, size: int = 1 << 20) -> List[str]:
    paths = []
    for i in range(n):
        p = os.path.join(d, f"disk{i:03d}")
        with open(p, "wb") as f:
            f.truncate(size)
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------------- LIO target
def _floor_lio_create(rts: Any, fabric: Any, vid: str, path: str) -> Any:
    """What LioTarget does per volume, with rtslib-fb called directly (no checks, no persistence)."""
    so = rts.FileIOStorageObject(f"volume-{vid}", dev=path, size=os.stat(path).st_size, write_back=False)
    target = rts.Target(fabric, f"{IQN_PREFIX}volume-{vid}", "create")
    tpg = rts.TPG(target, 1, "create")
    tpg.set_attribute("authentication", "1")
    tpg.set_attribute("generate_node_acls", "0")
    tpg.set_attribute("demo_mode_write_protect", "1")
    lun = rts.LUN(tpg, 0, so)
    rts.NetworkPortal(tpg, PORTAL[0], PORTAL[1], "any")
    tpg.enable = True
    # initialize_connection: the host's NodeACL with CHAP and LUN 0 mapped
    acl = rts.NodeACL(tpg, INITIATOR, "create")
    acl.chap_userid = "u" + vid.replace("-", "")[-12:]
    acl.chap_password = os.urandom(12).hex()  # throwaway
    rts.MappedLUN(acl, 0, lun)
    return target, so


def _lio_empty(rts: Any) -> bool:
    root = rts.RTSRoot()
    return not list(root.targets) and not list(root.storage_objects)


def task_lio(args: argparse.Namespace) -> Dict[str, Any]:
    import rtslib_fb as rts

    from blocklink.target.lio import LioTarget

    modprobe("target_core_mod", "target_core_file", "iscsi_target_mod")
    work = tempfile.mkdtemp(prefix="bench-lio.")
    paths = backing_files(work, args.n)
    target = LioTarget(portals=[f"{PORTAL[0]}:{PORTAL[1]}"], backstore="fileio",
                       lock_path=os.path.join(work, "locks"))
    fabric = rts.FabricModule("iscsi")
    samples: Dict[str, Dict[str, List[float]]] = {"create": {"blocklink": [], "floor": []},
                                                  "remove": {"blocklink": [], "floor": []}}
    # round -1 is a warm-up with 2 volumes (first-use imports and caches), not recorded
    for r in range(-1, args.reps):
        for impl in (["blocklink", "floor"] if r % 2 == 0 else ["floor", "blocklink"]):
            n = 2 if r < 0 else args.n
            vids = [f"bench-{impl[0]}{r + 1}-{i:03d}" for i in range(n)]
            if impl == "blocklink":
                t0 = time.perf_counter()
                for vid, path in zip(vids, paths):
                    target.create_export(vid, path)
                    target.initialize_connection(vid, CONNECTOR)
                t1 = time.perf_counter()
                for vid in vids:
                    target.terminate_connection(vid, CONNECTOR)
                    target.remove_export(vid)
                t2 = time.perf_counter()
            else:
                t0 = time.perf_counter()
                made = [_floor_lio_create(rts, fabric, vid, path) for vid, path in zip(vids, paths)]
                t1 = time.perf_counter()
                for t, so in made:
                    t.delete()
                    so.delete()
                t2 = time.perf_counter()
            if not _lio_empty(rts):
                raise RuntimeError(f"{impl} left LIO objects behind")
            if r < 0:
                continue
            samples["create"][impl].append(t1 - t0)
            samples["remove"][impl].append(t2 - t1)
            print(f"lio rep {r} {impl}: {t1 - t0:.2f} s / {t2 - t1:.2f} s", file=sys.stderr, flush=True)
    return {"n": args.n, "reps": args.reps, "samples": samples}


# ---------------------------------------------------------------------------------- main
def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.guest_tasks")
    p.add_argument("task", choices=["lio", "iscsi", "dmcrypt", "nova_iscsi", "nvme"])
    p.add_argument("--osbrick-python", required=True)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--creps", type=int, default=2, help="repetitions of the concurrent iSCSI case")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--mib", type=int, default=128, help="dmcrypt: MiB per sequential pass")
    p.add_argument("--compat-python", help="nova_iscsi: the compat virtualenv's interpreter (Nova, Cinder)")
    p.add_argument("--impls", default="blocklink,os-brick,floor", help="iscsi: which initiators to measure")
    args = p.parse_args(argv)
    if args.task == "lio":
        result = task_lio(args)
    elif args.task == "dmcrypt":
        from benchmarks import dmcrypt_ops

        result = dmcrypt_ops.task_dmcrypt(args)
    elif args.task == "nova_iscsi":
        from benchmarks import nova_ops

        result = nova_ops.task_nova_iscsi(args)
    elif args.task == "nvme":
        from benchmarks import nvme_ops

        result = nvme_ops.task_nvme(args)
    else:
        from benchmarks import iscsi_ops

        result = iscsi_ops.task_iscsi(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
