"""The typed connector contract: types mypy sees, exported errors, one alias table, one option
vocabulary, typed device results that survive a dict round trip, one reader of connector properties."""

import importlib
import inspect
import os
import subprocess
import sys
import typing
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import blocklink
from blocklink import errors
from blocklink.connection import PROTOCOL_ALIASES, PROTOCOLS, AttachedDevice, DeviceKind, parse_connection_info
from blocklink.hostpaths import HostPaths
from blocklink.initiator.properties import PROTOCOL_KEYS, get_connector_properties, protocol_properties
from blocklink.registry import BUILTIN_CONNECTORS, connector_for
from blocklink.testing.fakes import FakeExecutor

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# one valid connection-info data dict per built-in protocol
DATA = {
    "iscsi": {"target_portal": "127.0.0.1:3260", "target_iqn": "iqn.2010-10.org.test:vol1", "target_lun": 1},
    "rbd": {"name": "volumes/volume-1", "hosts": ["127.0.0.1"], "ports": ["6789"]},
    "fibre_channel": {"target_wwn": ["21000024ff406cc3"], "target_lun": 1},
    "nvmeof": {"target_nqn": "nqn.2014-08.org.test:vol1", "vol_uuid": "11111111-2222-3333-4444-555555555555",
               "portals": [["127.0.0.1", 4420, "tcp"]]},
}


def _mypy(*files):
    env = dict(os.environ, PYTHONPATH=TOP)
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental",
                           "--cache-dir=/dev/null",  # scripts/test runs mypy beside it on the shared cache
                           *files], cwd=TOP, env=env, capture_output=True, text=True, timeout=600)


# ------------------------------------------------------------------------------------------------ types


def test_mypy_sees_each_protocols_connector_type_and_the_target_helpers_conform():
    res = _mypy("tests/unit/typecheck_contract.py")
    assert res.returncode == 0, res.stdout + res.stderr
    revealed = [line.split('Revealed type is "', 1)[1].rstrip('"') for line in res.stdout.splitlines()
                if "Revealed type is" in line]
    assert revealed == [
        "blocklink.initiator.iscsi.ISCSIConnector", "blocklink.initiator.userspace.UserspaceISCSIConnector",
        "blocklink.initiator.rbd.RBDConnector", "blocklink.initiator.userspace.UserspaceRBDConnector",
        "blocklink.initiator.fc.FibreChannelConnector", "blocklink.initiator.fc.FibreChannelConnector",
        "blocklink.initiator.nvmeof.NVMeOFConnector", "blocklink.initiator.nvmeof.NVMeOFConnector",
        "blocklink.initiator.base.Connector",
    ]


def test_mypy_rejects_a_target_fake_that_drifted(tmp_path):
    snippet = tmp_path / "drifted.py"
    snippet.write_text(
        "from typing import Any, Mapping\n"
        "from blocklink.target.base import TargetHelper\n\n\n"
        "class Drifted:\n"
        "    def initialize_connection(self, vid: str, connector: Any) -> Mapping[str, Any]:  # no access_mode\n"
        "        return {}\n\n"
        "    def terminate_connection(self, vid: str, connector: Any) -> None:\n"
        "        pass\n\n\n"
        "helper: TargetHelper = Drifted()\n")
    res = _mypy(str(snippet))
    assert res.returncode == 1 and 'variable has type "TargetHelper"' in res.stdout, res.stdout


def test_overload_literals_are_exactly_the_alias_table():
    from blocklink import registry

    names = set()
    for ov in typing.get_overloads(registry.connector_for):
        hint = typing.get_type_hints(ov, vars(registry) | {"Connector": object, "ISCSIConnector": object,
                                                            "RBDConnector": object, "NVMeOFConnector": object,
                                                            "FibreChannelConnector": object,
                                                            "UserspaceISCSIConnector": object,
                                                            "UserspaceRBDConnector": object})["protocol"]
        if typing.get_origin(hint) is typing.Literal:
            names |= set(typing.get_args(hint))
    assert names == set(PROTOCOLS) | set(PROTOCOL_ALIASES)


# ------------------------------------------------------------------------------------------------ errors


def _error_classes():
    return {n: c for n, c in vars(errors).items()
            if inspect.isclass(c) and issubclass(c, Exception) and c.__module__ == errors.__name__}


def test_every_public_error_is_exported_from_blocklink():
    classes = _error_classes()
    assert len(classes) >= 29
    internal = {"LioError"}  # raised inside the privsep daemon only; callers get the TargetError it becomes
    for name, cls in classes.items():
        if name in internal:
            continue
        assert name in blocklink.__all__ and getattr(blocklink, name) is cls, name
        assert issubclass(cls, errors.BlocklinkError), name
    assert "Connector" in blocklink.__all__ and blocklink.Connector.__module__ == "blocklink.initiator.base"


@pytest.mark.parametrize("module,name", [
    ("blocklink.target.lio", "LioError"), ("blocklink.target.tgtadm", "TgtAdmError"),
    ("blocklink.hypervisor.secrets", "SecretError"), ("blocklink.hypervisor.schema", "SchemaError"),
    ("blocklink.hypervisor.disk", "InvalidDiskConfig"), ("blocklink.attach.records", "VolumeBusy"),
    ("blocklink.attach.records", "StaleRecord"), ("blocklink.attach.flow", "AttachFailed"),
    ("blocklink.attach.flow", "DetachFailed"), ("blocklink.initiator.rbd", "RbdIOError"),
    ("blocklink.initiator.properties", "MultipathdNotRunning"), ("blocklink.initiator.qsd", "QmpError"),
    ("blocklink.initiator.qsd", "DaemonDied"), ("blocklink.hypervisor.names", "TooManyDevices"),
])
def test_old_import_paths_give_the_errors_class(module, name):
    assert getattr(importlib.import_module(module), name) is getattr(errors, name)


def test_no_error_class_is_defined_outside_errors_py():
    """Runtime modules raise only errors.py's classes. Exempt: the testing harness, and the os-brick
    facade, whose exception module IS os-brick's API (its classes also subclass errors.py's)."""
    import pkgutil

    for mod in pkgutil.walk_packages(blocklink.__path__, "blocklink."):
        if mod.name.startswith(("blocklink.testing", "blocklink.compat.")):
            continue
        m = importlib.import_module(mod.name)
        for obj in vars(m).values():
            if inspect.isclass(obj) and issubclass(obj, errors.BlocklinkError):
                assert obj.__module__ == "blocklink.errors", f"{obj.__qualname__} defined in {obj.__module__}"


# ------------------------------------------------------------------------------------------------ aliases


@pytest.mark.parametrize("alias", sorted(set(PROTOCOLS) | set(PROTOCOL_ALIASES)))
def test_every_alias_is_accepted_by_connector_for_and_parse_connection_info(alias, tmp_path):
    canonical = PROTOCOL_ALIASES.get(alias, alias)
    conn = connector_for(alias, executor=FakeExecutor(), paths=HostPaths.under(str(tmp_path)),
                         **({} if canonical == "rbd" else {"lock_path": str(tmp_path / "locks")}))
    mod, _, cls = BUILTIN_CONNECTORS[canonical].partition(":")
    assert type(conn) is getattr(importlib.import_module(mod), cls) and conn.protocol == canonical
    for spelling in (alias, alias.upper()):
        info = parse_connection_info({"driver_volume_type": spelling, "data": dict(DATA[canonical])})
        assert info.driver_volume_type == canonical and isinstance(info, conn.info_type)
        # the typed info of that protocol accepts the alias too, and the connector takes the dict
        assert conn.info_type.from_dict({"driver_volume_type": spelling, "data": DATA[canonical]}) == info


def test_userspace_alias_resolves_through_the_same_table(tmp_path):
    conn = connector_for("ceph", attach="userspace", run_dir=str(tmp_path / "run"))
    assert type(conn).__name__ == "UserspaceRBDConnector"


# ------------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize("protocol,kw,option", [
    ("rbd", {"device_type": "scsi"}, "device_type"),
    ("rbd", {"timeout": -1}, "timeout"),
    ("rbd", {"do_local_attach": "yes"}, "do_local_attach"),
    ("rbd", {"bogus": 1}, "bogus"),
    ("nvmeof", {"use_multipath": "true"}, "use_multipath"),
    ("nvmeof", {"timeout": float("inf")}, "timeout"),
    ("nvmeof", {"ctrl_loss_tmo": -2}, "ctrl_loss_tmo"),
    ("nvmeof", {"nr_io_queues": 0}, "nr_io_queues"),
    ("nvmeof", {"host_nqn": "nqn with space"}, "host_nqn"),
    ("nvmeof", {"multipath": True}, "multipath"),
    ("iscsi", {"no_such_option": 1}, "no_such_option"),
    ("fc", {"no_such_option": 1}, "no_such_option"),
    ("iscsi", {"attach": "kernel-ish"}, "attach"),
])
def test_bad_options_raise_invalid_option_naming_it(protocol, kw, option, tmp_path):
    with pytest.raises(errors.InvalidOption) as ei:
        connector_for(protocol, paths=HostPaths.under(str(tmp_path)), executor=FakeExecutor(), **kw)
    assert ei.value.option == option and isinstance(ei.value, ValueError) and option in str(ei.value)


def test_use_multipath_defaults_to_false_everywhere(tmp_path):
    for protocol in ("iscsi", "fibre_channel", "nvmeof"):
        conn = connector_for(protocol, paths=HostPaths.under(str(tmp_path)), executor=FakeExecutor(),
                             lock_path=str(tmp_path / "locks"))
        assert conn.use_multipath is False, protocol


@pytest.mark.parametrize("protocol", ["rbd", "nvmeof"])
def test_renamed_device_timeout_warns_and_sets_timeout(protocol, tmp_path):
    with pytest.warns(DeprecationWarning, match="'device_timeout' is deprecated, use 'timeout'"):
        conn = connector_for(protocol, device_timeout=12, paths=HostPaths.under(str(tmp_path)),
                             executor=FakeExecutor())
    assert conn.timeout == 12.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert connector_for(protocol, timeout=5, paths=HostPaths.under(str(tmp_path))).timeout == 5.0


# ------------------------------------------------------------------------------------------------ devices


_text = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_characters="\x7f"), max_size=20)
_opt_text = st.none() | _text
_opt_int = st.none() | st.integers(0, 2**63)
_names = st.lists(_text, max_size=3).map(tuple)
_extra = st.dictionaries(st.text("abcdefghij_", min_size=1, max_size=8).map(lambda k: "x_" + k),
                         st.none() | st.booleans() | st.integers() | _text, max_size=3)


@st.composite
def _devices(draw):
    kind = draw(st.sampled_from(list(DeviceKind)))
    path = None if kind is DeviceKind.HANDLE else draw(_text.filter(bool))
    handle = object() if kind is DeviceKind.HANDLE or draw(st.booleans()) else None
    return AttachedDevice(
        protocol=draw(_text), path=path, handle=handle, type=kind, wwn=draw(_opt_text),
        multipath_id=draw(_opt_text), paths=draw(_names), volume=draw(_opt_text), size=draw(_opt_int),
        read_only=draw(st.none() | st.booleans()), nqn=draw(_opt_text), nsid=draw(_opt_int), uuid=draw(_opt_text),
        controllers=draw(_names), pid=draw(_opt_int), export=draw(_opt_text), bridge=draw(_opt_text),
        run_dir=draw(_opt_text), uri=draw(_opt_text), nbd_export=draw(_opt_text), extra=draw(_extra))


@settings(max_examples=300, deadline=None)
@given(_devices())
def test_attached_device_dict_round_trip_keeps_every_field(dev):
    back = AttachedDevice.from_dict(dev.to_dict())
    import dataclasses

    for f in dataclasses.fields(AttachedDevice):
        if f.name == "handle":
            assert back.handle is dev.handle
        else:
            assert getattr(back, f.name) == getattr(dev, f.name), f.name
    assert back == dev and back.type is dev.type


def test_device_kind_for_sockets_and_unknown_kinds():
    dev = AttachedDevice(protocol="iscsi", path="/run/x/nbd.sock", type="socket")
    assert dev.type is DeviceKind.SOCKET and dev.kind is DeviceKind.SOCKET and dev.to_dict()["type"] == "socket"
    with pytest.raises(errors.InvalidConnectionInfo) as ei:
        AttachedDevice(protocol="iscsi", path="/x", type="pipe")
    assert ei.value.field == "type"
    with pytest.raises(errors.InvalidConnectionInfo) as ei:
        AttachedDevice(protocol="iscsi", path="/x", extra={"pid": 1})  # a typed field cannot hide in extra
    assert ei.value.field == "extra.pid"
    with pytest.raises(errors.InvalidConnectionInfo) as ei:
        AttachedDevice.from_dict({"path": "/x", "pid": "one"})
    assert ei.value.field == "device.pid"


def test_old_extra_style_dicts_become_typed_fields():
    d = {"type": "file", "path": "/run/q/disk", "pid": 42, "export": "fuse", "run_dir": "/run/q", "size": 4096,
         "read_only": True, "name": "pool/img"}
    dev = AttachedDevice.from_dict(d, "rbd")
    assert (dev.protocol, dev.pid, dev.export, dev.run_dir, dev.size, dev.read_only) == \
        ("rbd", 42, "fuse", "/run/q", 4096, True)
    assert dev.extra == {"name": "pool/img"}


# ------------------------------------------------------------------------------------------------ properties


def _host(tmp_path, native_multipath="Y"):
    paths = HostPaths.under(str(tmp_path))
    files = {paths.etcpath("iscsi", "initiatorname.iscsi"): "InitiatorName=iqn.2004-10.org.test:host1\n",
             paths.etcpath("nvme", "hostnqn"): "nqn.2014-08.org.nvmexpress:uuid:2222\n",
             paths.etcpath("nvme", "hostid"): "2222\n",
             paths.sys("module", "nvme_core", "parameters", "multipath"): native_multipath + "\n"}
    for host, wwpn in (("host3", "0x21000024ff000001"),):
        d = paths.sys("class", "fc_host", host)
        files.update({os.path.join(d, "port_name"): wwpn, os.path.join(d, "node_name"): "0x20000024ff000001",
                      os.path.join(d, "port_state"): "Online"})
    for path, text in files.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return paths


@pytest.mark.parametrize("native", ["Y", "N"])
def test_connector_properties_come_from_one_reader(tmp_path, native):
    paths = _host(tmp_path, native)
    props = get_connector_properties(ip="127.0.0.1", host="h", paths=paths)
    assert props["nvme_native_multipath"] is (native == "Y")
    assert blocklink.HostConnector.from_dict(props).nvme_native_multipath is (native == "Y")
    for protocol in PROTOCOL_KEYS:
        conn = connector_for(protocol, paths=paths, executor=FakeExecutor(), lock_path=str(tmp_path / "locks"))
        own = conn.get_connector_properties()
        assert own and own == {k: props[k] for k in own}, protocol  # each connector: a slice of the same dict
    assert set(protocol_properties("iscsi", paths)) == {"initiator"}
    assert set(protocol_properties("fibre_channel", paths)) == {"wwpns", "wwnns"}
    assert {"nqn", "nvme_hostid", "nvme_native_multipath"} <= set(protocol_properties("nvmeof", paths))
    nvme = connector_for("nvmeof", paths=paths, host_nqn="nqn.2014-08.org.test:configured")
    assert nvme.get_connector_properties()["nqn"] == "nqn.2014-08.org.test:configured"
    rbd = connector_for("rbd", paths=paths, do_local_attach=True)
    assert rbd.get_connector_properties() == {"do_local_attach": True}
