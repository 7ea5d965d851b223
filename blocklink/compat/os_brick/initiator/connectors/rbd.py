"""``os_brick.initiator.connectors.rbd``: RBD as a file handle (Cinder's backup/copy paths) or a local device."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Mapping

from blocklink.ceph_client import CephFiles, connect, open_image, open_ioctx
from blocklink.compat.os_brick import exception
from blocklink.compat.os_brick.initiator.connectors.base import BrickConnector
from blocklink.compat.os_brick.initiator.linuxrbd import RBDImageMetadata, RBDVolumeIOWrapper
from blocklink.errors import BlocklinkError

if TYPE_CHECKING:
    from blocklink.initiator.rbd import RBDConnector as BlocklinkRBDConnector


class RBDConnector(BrickConnector):
    """Without ``do_local_attach`` (the info's key wins over the option) ``connect_volume`` returns
    ``{'path': RBDVolumeIOWrapper}``: an open image whose ``rbd_conf`` is a private ceph.conf with
    the monitors and the user's keyring, removed when the handle is closed."""

    blocklink_protocol = "rbd"
    blocklink: "BlocklinkRBDConnector"

    def _options(self, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        return {"do_local_attach": bool(kwargs.pop("do_local_attach", False))}

    @staticmethod
    def get_connector_properties(root_helper: Any, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        return {"do_local_attach": bool(kwargs.get("do_local_attach", False))}

    def connect_volume(self, connection_properties: Mapping[str, Any]) -> Dict[str, Any]:
        info = self._info(connection_properties)
        local = connection_properties.get("do_local_attach", self.blocklink.do_local_attach)
        if local:
            return super().connect_volume(connection_properties)
        try:
            return {"path": self._open(info)}
        except BlocklinkError as e:
            raise exception.translate(e, self.blocklink_protocol) from e

    def _open(self, info: Any) -> RBDVolumeIOWrapper:
        spec = self.blocklink.cluster_spec(info)
        files = CephFiles(spec, base_dir=self.blocklink.run_dir)
        cluster = ioctx = None
        try:
            cluster = connect(spec)
            ioctx = open_ioctx(cluster, spec, info.pool, info.namespace)
            image = open_image(ioctx, spec, info.pool, info.image, read_only=info.read_only)
        except BaseException:
            if ioctx is not None:
                ioctx.close()
            if cluster is not None:
                cluster.shutdown()
            files.close()
            raise
        meta = RBDImageMetadata(image, info.pool, spec.user, files.conffile)
        return RBDVolumeIOWrapper(meta, cluster=cluster, ioctx=ioctx, owned=files, read_only=info.read_only)
