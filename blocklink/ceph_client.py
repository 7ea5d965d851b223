"""librados sessions for the RBD connector and the RBD target helper (lazy ``rados``/``rbd`` import).

Monitors and the cephx key are handed to librados in memory (``conf={"mon_host":..., "key":...}``),
so the in-process path writes no key anywhere. Only the kernel ``rbd map`` path needs files; see
:class:`CephFiles`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

from blocklink.errors import AuthenticationFailed, ConnectionFailed, MissingDependency, VolumeNotFound
from blocklink.masking import Secret, get_logger
from blocklink.privatefile import create_private

LOG = get_logger(__name__)

_KEY_RE = re.compile(r"^\s*key\s*=\s*(\S+)\s*$", re.M)


def import_rados() -> Tuple[Any, Any]:
    try:
        import rados
        import rbd
    except ImportError:
        raise MissingDependency("rados/rbd", "install Debian's python3-rados and python3-rbd "
                                "(a venv needs --system-site-packages)") from None
    return rados, rbd


def key_from_keyring(text: str, user: Optional[str] = None) -> Optional[Secret]:
    """The ``key = ...`` of ``[client.<user>]`` (or of the only section) in keyring text."""
    section = None
    found: Dict[Optional[str], str] = {}
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1].strip()
            continue
        m = _KEY_RE.match(line)
        if m:
            found[section] = m.group(1)
    if user is not None and f"client.{user}" in found:
        return Secret(found[f"client.{user}"])
    if len(found) == 1:
        return Secret(next(iter(found.values())))
    return None


def mon_host_entry(host: str, port: Optional[int]) -> str:
    """A mon address for mon_host: v2 on 3300, otherwise the legacy v1 protocol (what Cinder hands out);
    no port: the bare host, so the client tries the default ports of both protocols."""
    h = f"[{host}]" if ":" in host else host
    if port is None:
        return h
    return f"[v2:{h}:{port}]" if port == 3300 else f"[v1:{h}:{port}]"


@dataclass(frozen=True)
class ClusterSpec:
    """How to reach a cluster: explicit monitors, or a ceph.conf; the user and its key."""

    user: str
    monitors: Tuple[Tuple[str, Optional[int]], ...] = ()
    conffile: Optional[str] = None
    key: Optional[Secret] = None
    keyring_file: Optional[str] = None
    cluster_name: str = "ceph"
    timeout: float = 30.0

    def rados_conf(self) -> Dict[str, str]:
        t = str(int(max(1, self.timeout)))
        conf = {"client_mount_timeout": t, "rados_mon_op_timeout": t, "rados_osd_op_timeout": t,
                "log_to_stderr": "false", "err_to_stderr": "false"}
        if self.monitors:
            conf["mon_host"] = ",".join(mon_host_entry(h, p) for h, p in self.monitors)
        if self.key is not None:
            conf["key"] = self.key.reveal()
        elif self.keyring_file:
            conf["keyring"] = self.keyring_file
        return conf

    def describe(self) -> str:
        where = ",".join(f"{h}:{p}" for h, p in self.monitors) or (self.conffile or "default ceph.conf")
        return f"ceph cluster {self.cluster_name} at {where} as client.{self.user}"


def connect(spec: ClusterSpec, options: Optional[Dict[str, str]] = None) -> Any:
    """A connected ``rados.Rados``; errors become typed blocklink errors naming the cluster.
    ``options`` are further client options (e.g. librbd's) that override the host's ceph.conf."""
    rados, _ = import_rados()
    conffile = spec.conffile if spec.conffile else ("/dev/null" if spec.monitors else None)
    try:
        cluster = rados.Rados(rados_id=spec.user, clustername=spec.cluster_name, conffile=conffile,
                              conf={**spec.rados_conf(), **(options or {})})
    except rados.Error as e:
        raise ConnectionFailed(spec.describe(), f"bad client configuration: {type(e).__name__}") from None
    try:
        cluster.connect(timeout=int(max(1, spec.timeout)))
    except rados.PermissionDeniedError:
        cluster.shutdown()
        raise AuthenticationFailed(spec.describe(), "cephx authentication refused (wrong key or user)") from None
    except rados.InvalidArgumentError:
        cluster.shutdown()
        if spec.key is not None or spec.keyring_file:  # librados' answer to an undecodable key
            raise AuthenticationFailed(spec.describe(), "the cephx key is malformed") from None
        raise ConnectionFailed(spec.describe(), "invalid client configuration") from None
    except (rados.TimedOut, rados.Error) as e:
        cluster.shutdown()
        reason = "timed out reaching the monitors" if isinstance(e, rados.TimedOut) else f"{type(e).__name__}: {e}"
        raise ConnectionFailed(spec.describe(), reason) from None
    return cluster


def open_ioctx(cluster: Any, spec: ClusterSpec, pool: str, namespace: str = "") -> Any:
    rados, _ = import_rados()
    try:
        ioctx = cluster.open_ioctx(pool)
    except rados.ObjectNotFound:
        raise VolumeNotFound(f"{spec.describe()}", f"pool {pool!r} does not exist") from None
    except rados.PermissionDeniedError:
        raise AuthenticationFailed(spec.describe(), f"client.{spec.user} may not use pool {pool!r}") from None
    if namespace:
        ioctx.set_namespace(namespace)
    return ioctx


def open_image(ioctx: Any, spec: ClusterSpec, pool: str, image: str, read_only: bool = False) -> Any:
    rados, rbd = import_rados()
    try:
        return rbd.Image(ioctx, image, read_only=read_only)
    except rbd.ImageNotFound:
        raise VolumeNotFound(f"{pool}/{image}", f"image does not exist ({spec.describe()})") from None
    except (rbd.PermissionError, rados.PermissionDeniedError):
        raise AuthenticationFailed(f"{pool}/{image}", f"client.{spec.user} may not open the image") from None


class CephFiles:
    """A private directory holding a generated ceph.conf and keyring (0600), removed on close.

    For CLI tools (``rbd device map``, ``rbd-nbd``) that can only take a key from a file: the key
    never appears on a command line, and the files live only as long as the command needs them.
    """

    def __init__(self, spec: ClusterSpec, base_dir: Optional[str] = None) -> None:
        _check_file_values(spec)  # one value must never become a second line or section of these files
        if base_dir:
            os.makedirs(base_dir, mode=0o700, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix="blocklink-ceph-", dir=base_dir)
        os.chmod(self.dir, 0o700)
        self.conffile = os.path.join(self.dir, "ceph.conf")
        self.keyring = os.path.join(self.dir, "keyring")
        lines = ["[global]"]
        if spec.monitors:
            lines.append("mon_host = " + ",".join(mon_host_entry(h, p) for h, p in spec.monitors))
        elif spec.conffile:
            lines.append(f"# from {spec.conffile}")
        try:
            if spec.conffile and not spec.monitors:
                shutil.copyfile(spec.conffile, self.conffile)
                with open(self.conffile, "a") as f:
                    f.write("\n")
            else:
                create_private(self.conffile, "\n".join(lines) + "\n")
            with open(self.conffile, "a") as f:
                f.write(f"[client.{spec.user}]\nkeyring = {self.keyring}\n")
            if spec.key is not None:
                create_private(self.keyring, f"[client.{spec.user}]\n\tkey = {spec.key.reveal()}\n")
            elif spec.keyring_file:
                shutil.copyfile(spec.keyring_file, self.keyring)
                os.chmod(self.keyring, 0o600)
            else:
                create_private(self.keyring, "")
        except BaseException:
            self.close()
            raise

    def args(self, user: str) -> Sequence[str]:
        return ("--conf", self.conffile, "--keyring", self.keyring, "--id", user)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "CephFiles":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _check_file_values(spec: ClusterSpec) -> None:
    from blocklink.connection import check_ceph_name, check_host
    from blocklink.errors import InvalidConnectionInfo

    check_ceph_name(spec.user, "user")
    for host, _ in spec.monitors:
        check_host(host, "mon_host")
    if spec.key is not None and not re.fullmatch(r"[A-Za-z0-9+/=]+", spec.key.reveal()):
        raise InvalidConnectionInfo("key", "a cephx key is base64 text (no spaces, line breaks or control characters)")


def iter_keyring_candidates(cluster: str, user: str, etc: str = "/etc") -> Iterator[str]:
    """Where a host keeps a client's keyring (Ceph's default search list)."""
    base = os.path.join(etc, "ceph")
    yield os.path.join(base, f"{cluster}.client.{user}.keyring")
    yield os.path.join(base, f"{cluster}.keyring")
    yield os.path.join(base, "keyring")
    yield os.path.join(base, "keyring.bin")
