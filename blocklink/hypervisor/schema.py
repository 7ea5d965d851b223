"""Validate ``<disk>`` (and ``<secret>``) XML against libvirt's own RelaxNG grammar, with lxml.

libvirt installs its schemas in ``/usr/share/libvirt/schemas``; a tiny grammar that includes
``domainoverrides.rng`` and starts at ``<ref name="disk"/>`` validates a lone ``<disk>`` element.
lxml is an optional dependency (the ``libvirt`` extra); :func:`schema_available` says whether both
are present.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Dict, Optional

from blocklink.errors import MissingDependency, SchemaError

__all__ = ["SCHEMA_DIR", "schema_available", "validate_disk_xml", "validate_secret_xml", "SchemaError"]

SCHEMA_DIR = "/usr/share/libvirt/schemas"
_lock = threading.Lock()
_cache: Dict[str, Any] = {}


def _lxml() -> Any:
    try:
        from lxml import etree
    except ImportError:
        raise MissingDependency("lxml", "install lxml (pip install blocklink[libvirt])") from None
    return etree


def schema_available(schema_dir: str = SCHEMA_DIR) -> bool:
    try:
        _lxml()
    except MissingDependency:
        return False
    return os.path.exists(os.path.join(schema_dir, "domainoverrides.rng"))


def _grammar(kind: str, schema_dir: str) -> Any:
    key = f"{kind}:{schema_dir}"
    with _lock:
        if key not in _cache:
            etree = _lxml()
            if kind == "disk":
                text = (f'<grammar xmlns="http://relaxng.org/ns/structure/1.0" '
                        f'datatypeLibrary="http://www.w3.org/2001/XMLSchema-datatypes">'
                        f'<start><ref name="disk"/></start>'
                        f'<include href="{os.path.join(schema_dir, "domainoverrides.rng")}"/></grammar>')
                _cache[key] = etree.RelaxNG(etree.fromstring(text))
            else:
                _cache[key] = etree.RelaxNG(etree.parse(os.path.join(schema_dir, f"{kind}.rng")))
        return _cache[key]


def _validate(kind: str, xml: str, schema_dir: str) -> None:
    etree = _lxml()
    rng = _grammar(kind, schema_dir)
    try:
        doc = etree.fromstring(xml.encode())
    except etree.XMLSyntaxError as e:
        raise SchemaError(kind, f"not well-formed: {e}") from None
    if not rng.validate(doc):
        err: Optional[Any] = rng.error_log.last_error
        where = (err.path or kind) if err is not None else kind
        raise SchemaError(where, err.message if err is not None else "does not match libvirt's grammar")


def validate_disk_xml(xml: str, schema_dir: str = SCHEMA_DIR) -> None:
    """Raise :class:`SchemaError` unless ``xml`` is a ``<disk>`` libvirt's grammar accepts."""
    _validate("disk", xml, schema_dir)


def validate_secret_xml(xml: str, schema_dir: str = SCHEMA_DIR) -> None:
    _validate("secret", xml, schema_dir)
