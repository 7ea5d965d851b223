"""``os_brick.initiator.linuxrbd``: a librbd image as a Python file (what Cinder's backup driver reads).

Cinder's Ceph backup driver takes the RBD fast path (``rbd export-diff | rbd import-diff``) only for
a file that has ``rbd_image``, and reads ``rbd_pool``, ``rbd_user`` and ``rbd_conf`` to run the
``rbd`` tool on the same image; it also wraps images of its own with these two classes.
"""

from __future__ import annotations

from typing import Any, Optional

from blocklink.initiator.rbd import RbdHandle


class RBDImageMetadata:
    """An open ``rbd.Image`` with the pool, cephx user and ceph.conf that reach it."""

    def __init__(self, image: Any, pool: Optional[str], user: Optional[str], conf: Optional[str]) -> None:
        self.image = image
        self.pool = pool or ""
        self.user = user or ""
        self.conf = conf or ""


class RBDVolumeIOWrapper(RbdHandle):
    """A seekable file over ``rbd_volume.image`` (blocklink's :class:`RbdHandle`).

    Built by Cinder around an image it owns, ``close()`` closes only the image. Built by the
    facade's RBD connector, it also owns the cluster connection, the I/O context and the private
    ceph.conf + keyring behind ``rbd_conf`` (``owned``), and releases all of them at close.
    """

    def __init__(self, rbd_volume: RBDImageMetadata, *, cluster: Any = None, ioctx: Any = None,
                 owned: Any = None, read_only: bool = False) -> None:
        name = getattr(rbd_volume.image, "name", "") or "image"
        super().__init__(cluster, ioctx, rbd_volume.image, f"{rbd_volume.pool}/{name}", read_only=read_only)
        self._rbd_volume = rbd_volume
        self._owned = owned

    @property
    def rbd_image(self) -> Any:
        return self._rbd_volume.image

    @property
    def rbd_user(self) -> str:
        return self._rbd_volume.user

    @property
    def rbd_pool(self) -> str:
        return self._rbd_volume.pool

    @property
    def rbd_conf(self) -> str:
        return self._rbd_volume.conf

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._owned is not None:
                self._owned.close()
                self._owned = None
