"""Property-based fuzzing of every from_dict: bad input gives the typed error, never another exception.

Short mode by default; ``BLOCKLINK_FUZZ_EXAMPLES=10000`` for the long mode.
"""

import copy
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocklink.connection import (AttachedDevice, FcInfo, HostConnector, IscsiInfo, NvmeofInfo, RbdInfo,
                                  parse_connection_info)
from blocklink.errors import InvalidConnectionInfo
from tests.conftest import VECTORS

EXAMPLES = int(os.environ.get("BLOCKLINK_FUZZ_EXAMPLES", "300"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

with open(os.path.join(VECTORS, "connection_info.json")) as f:
    CASES = json.load(f)

KEYS = sorted({k for c in CASES for k in c["data"]} | {
    "auth_username_in", "auth_password_in", "access_mode", "target_nqn", "portals", "nqn", "transport_type",
    "target_port", "vol_uuid", "volume_nguid", "ns_id", "host_nqn", "initiator", "host", "wwpns", "wwnns",
    "multipath", "do_local_attach", "path", "type", "scsi_wwn"})

hostile = st.sampled_from(["", " ", "..", "../../etc/passwd", "a/b", "x;rm -rf /", "a\nb", "<disk/>", "'\"",
                           "\x00", "iqn.2010-10.org.openstack:vol", "127.0.0.1:3260", "[::1]:3260", "-1", "3260",
                           "0x21000024ff406cc3", "AQB==", "CHAP", "rw", "ro", "tcp", "volumes/img", "p/n/i"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=30), hostile)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8) | hostile, inner,
                                                                       max_size=3)), max_leaves=8)
data_dicts = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), values, max_size=10)


def _mutations():
    """Real vectors with one key replaced, deleted or added: near-valid input that reaches deep code."""
    case = st.sampled_from(CASES)
    return st.tuples(case, st.sampled_from(KEYS), st.one_of(values, st.just("__delete__")))


def _parse_each(d):
    for parser in (IscsiInfo.from_dict, RbdInfo.from_dict, FcInfo.from_dict, NvmeofInfo.from_dict,
                   HostConnector.from_dict, AttachedDevice.from_dict):
        try:
            parsed = parser(d)
        except InvalidConnectionInfo:
            continue
        # whatever parses must serialise and parse again to an equal value
        back = parsed.to_dict()
        assert type(parsed).from_dict(back) == parsed


@SETTINGS
@given(data_dicts)
def test_from_dict_random(d):
    _parse_each(d)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["driver_volume_type", "data", "serial"]) | st.text(max_size=5),
                       st.one_of(values, st.sampled_from(["iscsi", "rbd", "fibre_channel", "nvmeof", "fc"]),
                                 data_dicts), max_size=4))
def test_parse_connection_info_random(d):
    try:
        info = parse_connection_info(d)
    except InvalidConnectionInfo:
        return
    assert parse_connection_info(info.to_dict()) == info


@SETTINGS
@given(_mutations())
def test_mutated_vectors(m):
    case, key, value = m
    data = copy.deepcopy(case["data"])
    if value == "__delete__":
        data.pop(key, None)
    else:
        data[key] = value
    d = {"driver_volume_type": case["driver_volume_type"], "data": data}
    try:
        info = parse_connection_info(d)
    except InvalidConnectionInfo as e:
        assert e.field  # the error names a field
        for secret_key in ("auth_password", "discovery_auth_password", "keyring"):
            s = case["data"].get(secret_key)
            if isinstance(s, str) and len(s) >= 6:
                assert s not in str(e)
        return
    assert parse_connection_info(info.to_dict()) == info
