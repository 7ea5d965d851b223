"""``os_brick.initiator.connectors``: the connector classes (Cinder checks ``isinstance`` against
``connectors.iscsi.ISCSIConnector`` and ``connectors.fibre_channel.FibreChannelConnector``)."""

from blocklink.compat.os_brick.initiator.connectors import fibre_channel, iscsi, nvmeof, rbd  # noqa: F401
