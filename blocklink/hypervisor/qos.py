"""Cinder front-end QoS specs -> libvirt ``<iotune>``.

Two steps, as in OpenStack:

1. :func:`resolve_per_gb` (what Cinder's volume manager does before the specs reach the compute
   host): each ``X_per_gb`` becomes ``X = min(max(X_per_gb_min, X_per_gb * size), X_max)``. Here
   ``X_max`` is a *cap* on the per-GB result and is consumed.
2. :func:`iotune_from_qos` (what Nova's volume driver does): the 13 keys libvirt knows become
   ``<iotune>`` children; other keys (``group_name``, ``*_max_length``, vendor keys, leftover
   ``*_per_gb_min``) are ignored. An ``X_max`` still present here is QEMU's *burst* limit - the same
   key with its second meaning.

Unlike Nova, values must be non-negative integers and the combination must be one libvirt and
QEMU act on: ``total_*`` excludes ``read_*``/``write_*`` (libvirt refuses the attach), a burst needs
its base limit and must not be below it (libvirt accepts that, and QEMU then throttles nothing at
all). Anything else raises :class:`~blocklink.hypervisor.disk.InvalidDiskConfig` naming the key.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from blocklink.hypervisor.disk import IOTUNE_ORDER, InvalidDiskConfig, IoTune, _uint
from blocklink.masking import get_logger

LOG = get_logger(__name__)

__all__ = ["QOS_KEYS", "PER_GB_KEYS", "resolve_per_gb", "iotune_from_qos"]

QOS_KEYS = IOTUNE_ORDER  # the key names are the element names
PER_GB_KEYS = ("read_iops_sec", "read_bytes_sec", "write_iops_sec", "write_bytes_sec", "total_iops_sec",
               "total_bytes_sec")


def resolve_per_gb(specs: Mapping[str, Any], size_gb: int, where: str = "qos_specs") -> Dict[str, Any]:
    """Cinder's per-GB resolution for a volume of ``size_gb`` GiB; returns a new dict."""
    size = _uint(size_gb, "volume_size_gb")
    out = dict(specs)
    for key in PER_GB_KEYS:
        per_gb_key = f"{key}_per_gb"
        if per_gb_key not in out:
            continue
        minimum = _uint(out.pop(f"{key}_per_gb_min", 0), f"{where}.{key}_per_gb_min")
        per_gb = max(minimum, _uint(out.pop(per_gb_key), f"{where}.{per_gb_key}") * size)
        cap = _uint(out.pop(f"{key}_max", per_gb), f"{where}.{key}_max")
        out[key] = min(per_gb, cap)
    return out


def iotune_from_qos(specs: Any, *, size_gb: Optional[int] = None, where: str = "data.qos_specs") -> Optional[IoTune]:
    """The ``<iotune>`` for Cinder QoS ``specs`` (None or empty -> no ``<iotune>``).

    With ``size_gb``, ``*_per_gb`` keys are resolved first (step 1). Without it they are ignored,
    as Nova ignores them: Cinder resolves them before handing out the connection info.
    """
    if specs is None:
        return None
    if not isinstance(specs, Mapping):
        raise InvalidDiskConfig(where, f"expected a dict of QoS keys, got {type(specs).__name__}")
    if size_gb is not None:
        specs = resolve_per_gb(specs, size_gb, where)
    values = {k: v for k, v in specs.items() if k in QOS_KEYS and v is not None}
    ignored = sorted(str(k) for k in specs if k not in QOS_KEYS)
    if ignored:
        LOG.debug("QoS keys without a libvirt iotune setting ignored: %s", ", ".join(ignored))
    if not values:
        return None
    return IoTune.from_mapping(values, where)
