"""RBD "target" side: create/resize/delete images and produce Cinder's RBD connection info.

What Cinder's RBD driver does in ``initialize_connection``: monitor addresses from the monmap
(``hosts``/``ports``, IPv6 without brackets, ports as strings), the client user and libvirt secret
UUID the compute hosts use, ``discard`` on. RBD has no per-host ACL, so terminate_connection
changes nothing on the cluster.
"""

from __future__ import annotations

import json
import threading
from typing import Any, List, Mapping, Optional, Tuple, Union

from blocklink.ceph_client import ClusterSpec, connect, import_rados, key_from_keyring, open_ioctx
from blocklink.connection import HostConnector, RbdInfo, check_ceph_name
from blocklink.errors import InvalidConnectionInfo, TargetError, VolumeNotFound
from blocklink.masking import Secret, get_logger

LOG = get_logger(__name__)


def image_name(volume_id: str, template: str = "volume-{}") -> str:
    return check_ceph_name(template.format(volume_id), "volume_id")


def parse_mon_dump(dump: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """(host, port) of each monitor's legacy v1 address, as Cinder's ``_get_mon_addrs`` returns."""
    out = []
    for mon in dump.get("mons", []):
        addr = None
        for a in (mon.get("public_addrs") or {}).get("addrvec", []):
            if a.get("type") == "v1":
                addr = a.get("addr")
        addr = addr or mon.get("addr") or mon.get("public_addr") or ""
        addr = addr.split("/")[0]
        if not addr:
            continue
        host, _, port = addr.rpartition(":")
        out.append((host.strip("[]"), port))
    return out


class RbdTarget:
    """Manage RBD volumes in one pool and hand out their connection info.

    ``user``/``keyring`` (or ``key``) is how *this* helper talks to the cluster; ``client_user``
    and ``secret_uuid`` go into the connection info for the compute hosts (Cinder's ``rbd_user``,
    ``rbd_secret_uuid``). ``include_keyring=True`` adds the client's keyring to the info, as
    Cinder does with ``rbd_keyring_conf`` (cinderlib): only for hosts without a Ceph config.
    """

    def __init__(self, *, conffile: Optional[str] = None, user: str = "admin", pool: str = "volumes",
                 keyring: Optional[str] = None, key: Union[Secret, str, None] = None,
                 client_user: Optional[str] = None, client_key: Union[Secret, str, None] = None,
                 secret_uuid: Optional[str] = None, cluster_name: str = "ceph",
                 include_keyring: bool = False, name_template: str = "volume-{}", timeout: float = 30.0) -> None:
        check_ceph_name(pool, "pool")
        check_ceph_name(user, "user")
        self.pool = pool
        self.client_user = client_user or user
        self.secret_uuid = secret_uuid
        self.cluster_name = cluster_name
        self.include_keyring = include_keyring
        self.name_template = name_template
        self._client_key = Secret(client_key) if isinstance(client_key, str) else client_key
        self.spec = ClusterSpec(user=user, conffile=conffile, key=Secret(key) if isinstance(key, str) else key,
                                keyring_file=keyring, cluster_name=cluster_name, timeout=timeout)
        self._cluster: Any = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ cluster session
    def _rados(self) -> Any:
        with self._lock:
            if self._cluster is None:
                self._cluster = connect(self.spec)
            return self._cluster

    def close(self) -> None:
        with self._lock:
            if self._cluster is not None:
                self._cluster.shutdown()
                self._cluster = None

    def __enter__(self) -> "RbdTarget":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _ioctx(self) -> Any:
        return open_ioctx(self._rados(), self.spec, self.pool)

    # ------------------------------------------------------------------ volumes
    def create_volume(self, volume_id: str, size: int, features: Optional[int] = None) -> str:
        _, rbd = import_rados()
        name = image_name(volume_id, self.name_template)
        ioctx = self._ioctx()
        try:
            feats = features if features is not None else rbd.RBD_FEATURE_LAYERING
            rbd.RBD().create(ioctx, name, size, old_format=False, features=feats)
        except rbd.ImageExists:
            raise TargetError(f"{self.pool}/{name}", "image already exists") from None
        finally:
            ioctx.close()
        LOG.info("created rbd image %s/%s (%d bytes)", self.pool, name, size)
        return name

    def delete_volume(self, volume_id: str) -> None:
        _, rbd = import_rados()
        name = image_name(volume_id, self.name_template)
        ioctx = self._ioctx()
        try:
            rbd.RBD().remove(ioctx, name)
        except rbd.ImageNotFound:
            pass
        except rbd.ImageBusy:
            raise TargetError(f"{self.pool}/{name}", "image still has watchers (attached somewhere)") from None
        finally:
            ioctx.close()

    def extend_volume(self, volume_id: str, new_size: int) -> int:
        _, rbd = import_rados()
        name = image_name(volume_id, self.name_template)
        ioctx = self._ioctx()
        try:
            with rbd.Image(ioctx, name) as img:
                if new_size < img.size():
                    raise TargetError(f"{self.pool}/{name}", "shrinking a volume is refused")
                img.resize(new_size)
                return int(img.size())
        except rbd.ImageNotFound:
            raise VolumeNotFound(f"{self.pool}/{name}", "image does not exist") from None
        finally:
            ioctx.close()

    def volume_size(self, volume_id: str) -> int:
        _, rbd = import_rados()
        name = image_name(volume_id, self.name_template)
        ioctx = self._ioctx()
        try:
            with rbd.Image(ioctx, name, read_only=True) as img:
                return int(img.size())
        except rbd.ImageNotFound:
            raise VolumeNotFound(f"{self.pool}/{name}", "image does not exist") from None
        finally:
            ioctx.close()

    # ------------------------------------------------------------------ connection info
    def monitors(self) -> List[Tuple[str, str]]:
        ret, out, err = self._rados().mon_command(json.dumps({"prefix": "mon dump", "format": "json"}), b"")
        if ret != 0:
            raise TargetError(self.spec.describe(), f"mon dump failed: {err}")
        try:
            return parse_mon_dump(json.loads(out))
        except (ValueError, TypeError, AttributeError) as e:  # not the JSON a monitor writes
            raise TargetError(self.spec.describe(), f"unreadable mon dump ({type(e).__name__})") from None

    def _client_keyring(self) -> Secret:
        key = self._client_key
        if key is None and self.client_user == self.spec.user:
            key = self.spec.key
            if key is None and self.spec.keyring_file:
                with open(self.spec.keyring_file) as f:
                    key = key_from_keyring(f.read(), self.spec.user)
        if key is None:
            ret, out, _ = self._rados().mon_command(
                json.dumps({"prefix": "auth get-key", "entity": f"client.{self.client_user}", "format": "json"}), b"")
            if ret != 0:
                raise TargetError(self.spec.describe(), f"cannot read the key of client.{self.client_user}")
            key = Secret(json.loads(out)["key"])
        return Secret(f"[client.{self.client_user}]\n\tkey = {key.reveal()}\n")

    def initialize_connection(self, volume_id: str, connector: Union[HostConnector, Mapping[str, Any], None] = None,
                              access_mode: Optional[str] = None) -> RbdInfo:
        """Cinder's RBD connection info for ``volume_id`` (the connector is accepted, not needed)."""
        if connector is not None and not isinstance(connector, HostConnector):
            HostConnector.from_dict(connector)  # validate like Cinder does, even if unused
        if access_mode not in (None, "rw", "ro"):
            raise InvalidConnectionInfo("access_mode", "expected 'rw' or 'ro'")
        mons = self.monitors()
        info = RbdInfo(
            name=f"{self.pool}/{image_name(volume_id, self.name_template)}",
            hosts=tuple(h for h, _ in mons), ports=tuple(p for _, p in mons),
            cluster_name=self.cluster_name, auth_enabled=True, auth_username=self.client_user,
            secret_type="ceph", secret_uuid=self.secret_uuid, volume_id=volume_id, discard=True,
            keyring=self._client_keyring() if self.include_keyring else None, access_mode=access_mode)
        return info

    def terminate_connection(self, volume_id: str, connector: Any = None) -> None:
        """Nothing to undo: RBD has no per-host export or ACL."""
        return None
