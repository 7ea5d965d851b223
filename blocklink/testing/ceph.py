"""A real, throwaway Ceph cluster for tests: one mon + one osd (memstore), cephx on, 127.0.0.1 only.

Starts in about a second::

    with CephCluster.start() as ceph:          # or ceph = CephCluster.start(); ...; ceph.stop()
        info = ceph.rbd_target().initialize_connection(...)

Everything lives under one directory (config, keyring, daemon data, logs, pid files); ``stop()``
signals the daemons by PID (checking their command line names this cluster's config) and removes
the directory. Needs Debian's ceph-mon, ceph-osd and ceph-common.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from blocklink.testing.procs import read_pidfile, stop_pids

_CONF = """[global]
fsid = {fsid}
mon_host = [v2:127.0.0.1:{p2},v1:127.0.0.1:{p1}]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
keyring = {d}/keyring
run_dir = {d}/run
crash_dir = {d}/crash
log_file = {d}/log/$name.log
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 2
mon_data_avail_crit = 1
paxos_propose_interval = 0.01
paxos_min_wait = 0.01
osd_class_update_on_start = false
[mon]
mon_data = {d}/$name
pid_file = {d}/run/$name.pid
admin_socket = {d}/run/$name.asok
[osd]
osd_data = {d}/$name
pid_file = {d}/run/$name.pid
admin_socket = {d}/run/$name.asok
osd_objectstore = memstore
memstore_device_bytes = {store_bytes}
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
"""


class CephStartError(RuntimeError):
    pass


def _free_ports(n: int) -> List[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class CephCluster:
    directory: str
    conffile: str
    keyring: str
    mon_port: int
    pool: str = "volumes"
    fsid: str = ""
    _stopped: bool = field(default=False, repr=False)
    _admin: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, directory: Optional[str] = None, pool: str = "volumes",
              store_bytes: int = 4 << 30, timeout: float = 60.0) -> "CephCluster":
        d = os.path.realpath(directory or tempfile.mkdtemp(prefix="blocklink-ceph."))
        for sub in ("run", "log", "crash", "osd.0"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        p1, p2 = _free_ports(2)
        fsid = str(uuid.uuid4())
        conf = os.path.join(d, "ceph.conf")
        with open(conf, "w") as f:
            f.write(_CONF.format(fsid=fsid, p1=p1, p2=p2, d=d, store_bytes=store_bytes))
        keyring = os.path.join(d, "keyring")
        cluster = cls(directory=d, conffile=conf, keyring=keyring, mon_port=p1, pool=pool, fsid=fsid)
        try:
            cluster._bootstrap(p1, p2, timeout)
        except BaseException:
            cluster.stop(keep_logs=True)
            raise
        return cluster

    def _run(self, *argv: str, input: Optional[str] = None, check: bool = True) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CEPH_")}
        p = subprocess.run(list(argv), input=input, capture_output=True, text=True, env=env, timeout=120)
        if check and p.returncode != 0:
            raise CephStartError(f"{' '.join(argv[:3])} failed ({p.returncode}): {p.stderr.strip()[-500:]}"
                                 f" (logs in {self.directory}/log)")
        return p.stdout

    def _bootstrap(self, p1: int, p2: int, timeout: float) -> None:
        d, c = self.directory, self.conffile
        kr = self.keyring
        self._run("ceph-authtool", "--create-keyring", kr, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
        self._run("ceph-authtool", kr, "--gen-key", "-n", "client.admin", "--cap", "mon", "allow *",
                  "--cap", "osd", "allow *", "--cap", "mds", "allow *", "--cap", "mgr", "allow *")
        self._run("ceph-authtool", kr, "--gen-key", "-n", "osd.0", "--cap", "mon", "allow profile osd",
                  "--cap", "osd", "allow *", "--cap", "mgr", "allow profile osd")
        os.chmod(kr, 0o600)
        monmap = os.path.join(d, "monmap")
        self._run("monmaptool", "--create", "--fsid", self.fsid, "--addv", "a",
                  f"[v2:127.0.0.1:{p2},v1:127.0.0.1:{p1}]", monmap)
        self._run("ceph-mon", "-c", c, "-i", "a", "--mkfs", "--monmap", monmap, "--keyring", kr)
        self._run("ceph-mon", "-c", c, "-i", "a")
        osd_uuid = str(uuid.uuid4())
        self._run("ceph-osd", "-c", c, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        # monitor commands in-process: each `ceph` CLI start costs seconds in the TCG test guest
        self._mon("osd new", uuid=osd_uuid, id=0)
        self._run("ceph-osd", "-c", c, "-i", "0")
        deadline = time.monotonic() + timeout
        while not any(o.get("up") == 1 for o in self._mon_json("osd dump").get("osds", [])):
            if time.monotonic() > deadline:
                raise CephStartError(f"osd.0 did not come up within {timeout:.0f}s (logs in {d}/log)")
            time.sleep(0.05)  # bounded: the mon offers no event for "osd up" we can block on here
        self.create_pool(self.pool)

    # ------------------------------------------------------------------ in-process admin session
    def admin(self) -> Any:
        """A connected ``rados.Rados`` as client.admin (created on first use, closed by stop())."""
        if self._admin is None:
            import rados

            r = rados.Rados(conffile=self.conffile, rados_id="admin", conf={"keyring": self.keyring})
            r.connect(timeout=60)
            self._admin = r
        return self._admin

    def _mon(self, prefix: str, **args: Any) -> bytes:
        cmd = dict(args, prefix=prefix, format="json")
        ret, out, err = self.admin().mon_command(json.dumps(cmd), b"", timeout=60)
        if ret != 0:
            raise CephStartError(f"ceph {prefix} failed ({ret}): {err} (logs in {self.directory}/log)")
        return bytes(out)

    def _mon_json(self, prefix: str, **args: Any) -> Dict[str, Any]:
        out = self._mon(prefix, **args)
        return dict(json.loads(out)) if out.strip() else {}

    def pids(self) -> List[int]:
        run = os.path.join(self.directory, "run")
        out = []
        for name in sorted(os.listdir(run)) if os.path.isdir(run) else []:
            if name.endswith(".pid"):
                pid = read_pidfile(os.path.join(run, name))
                if pid:
                    out.append((name, pid))
        # osds first: they tell the mon they are going
        return [pid for name, pid in sorted(out, key=lambda x: not x[0].startswith("osd"))]

    def stop(self, keep_logs: bool = False) -> None:
        if self._stopped:
            return
        if self._admin is not None:
            try:
                self._admin.shutdown()
            finally:
                self._admin = None
        run = os.path.join(self.directory, "run")
        osd = [read_pidfile(os.path.join(run, n)) for n in os.listdir(run) if n.startswith("osd")] \
            if os.path.isdir(run) else []
        mon = [read_pidfile(os.path.join(run, n)) for n in os.listdir(run) if n.startswith("mon")] \
            if os.path.isdir(run) else []
        stop_pids([p for p in osd if p], must_contain=self.conffile)
        stop_pids([p for p in mon if p], must_contain=self.conffile)
        self._stopped = True
        if not keep_logs:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "CephCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers for tests
    @property
    def mon_host(self) -> str:
        return "127.0.0.1"

    def admin_key(self) -> str:
        return self.user_key("admin")

    def user_key(self, user: str) -> str:
        return str(self._mon_json("auth get-key", entity=f"client.{user}")["key"])

    def create_user(self, user: str, caps: Optional[Dict[str, str]] = None) -> str:
        """Create ``client.<user>`` (default: ``profile rbd`` on this cluster's pool); returns its key."""
        caps = caps or {"mon": "profile rbd", "osd": f"profile rbd pool={self.pool}"}
        flat: List[str] = []
        for k, v in caps.items():
            flat += [k, v]
        self._mon("auth get-or-create", entity=f"client.{user}", caps=flat)
        return self.user_key(user)

    def create_pool(self, pool: str) -> None:
        import rbd

        self._mon("osd pool create", pool=pool, pg_num=8, pgp_num=8)
        ioctx = self.admin().open_ioctx(pool)
        try:
            rbd.RBD().pool_init(ioctx, False)
        finally:
            ioctx.close()

    def pools(self) -> List[str]:
        return list(self.admin().list_pools())

    def create_image(self, name: str, size: int, pool: Optional[str] = None) -> None:
        self._run("rbd", "-c", self.conffile, "--id", "admin", "create", "--size", f"{size}B",
                  "--image-feature", "layering", f"{pool or self.pool}/{name}")

    def remove_image(self, name: str, pool: Optional[str] = None) -> None:
        self._run("rbd", "-c", self.conffile, "--id", "admin", "rm", "--no-progress", f"{pool or self.pool}/{name}")

    def image_size(self, name: str, pool: Optional[str] = None) -> int:
        out = self._run("rbd", "-c", self.conffile, "--id", "admin", "info", "--format=json",
                        f"{pool or self.pool}/{name}")
        return int(json.loads(out)["size"])

    def watchers(self, name: str, pool: Optional[str] = None) -> List[Dict[str, Any]]:
        import rbd

        ioctx = self.admin().open_ioctx(pool or self.pool)
        try:
            with rbd.Image(ioctx, name, read_only=True) as img:  # read-only: adds no watch of its own
                # the shape `rbd status --format=json` prints
                return [{"address": w["addr"], "client": w["id"], "cookie": w["cookie"]}
                        for w in img.watchers_list()]
        finally:
            ioctx.close()

    def export_image(self, name: str, dest: str, pool: Optional[str] = None) -> None:
        self._run("rbd", "-c", self.conffile, "--id", "admin", "export", "--no-progress",
                  f"{pool or self.pool}/{name}", dest)

    def rbd_target(self, user: str = "admin", **kwargs: Any) -> Any:
        """A :class:`blocklink.target.rbd.RbdTarget` for this cluster."""
        from blocklink.target.rbd import RbdTarget

        return RbdTarget(conffile=self.conffile, user=user, pool=self.pool, keyring=self.keyring, **kwargs)
