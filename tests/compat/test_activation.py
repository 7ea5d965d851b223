"""activate()/deactivate() with the real os-brick installed next to the facade (fresh interpreters)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from tests.compat.conftest import ROOT


def run(code: str, env: Any = None) -> str:
    p = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, **(env or {})), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout.strip()


def test_activate_shadows_the_installed_os_brick_and_deactivate_restores_it() -> None:
    out = run("""
import importlib.util, sys
from blocklink.compat import os_brick as facade
real_origin = importlib.util.find_spec('os_brick').origin
facade.activate()
import os_brick, os_brick.initiator.connector as c, os_brick.exception as x
from os_brick.initiator.connectors import iscsi
print(os_brick.__name__, c.__name__, x.VolumeDeviceNotFound.__module__, iscsi.ISCSIConnector.__module__)
try:
    import os_brick.remotefs.remotefs
except ImportError as e:
    print('refused', type(e).__name__, 'os_brick.remotefs' in str(e))
facade.deactivate()
import os_brick as real, os_brick.initiator.connector as rc
print(real.__file__ == real_origin, rc.__name__, 'blocklink' not in rc.__file__)
""")
    lines = out.splitlines()
    assert lines[0] == ("blocklink.compat.os_brick blocklink.compat.os_brick.initiator.connector "
                        "blocklink.compat.os_brick.exception blocklink.compat.os_brick.initiator.connectors.iscsi")
    assert lines[1] == "refused NotProvided True"
    assert lines[2] == "True os_brick.initiator.connector True"


def test_activate_after_the_real_one_was_imported_errors_or_replaces() -> None:
    out = run("""
import os_brick.initiator.connector as real_connector
from blocklink.compat import os_brick as facade
try:
    facade.activate()
except facade.AlreadyImported as e:
    print('refused', 'os_brick.initiator.connector' in e.modules, facade.is_active())
facade.activate(replace=True)
import os_brick.initiator.connector as now
print(now.__name__, now is not real_connector)
facade.deactivate()
import os_brick.initiator.connector as back
print(back is real_connector)
""")
    assert out.splitlines() == ["refused True False", "blocklink.compat.os_brick.initiator.connector True", "True"]


def test_pth_hook_turns_it_on_only_with_the_environment_variable(tmp_path: Any) -> None:
    """The operator's opt-in from the docstring: a .pth line plus BLOCKLINK_OS_BRICK=1."""
    line = ('import os; os.environ.get("BLOCKLINK_OS_BRICK") == "1" and '
            '__import__("blocklink.compat.os_brick.hook")\n')
    (tmp_path / "blocklink-os-brick.pth").write_text(line)
    code = (f"import site; site.addsitedir({str(tmp_path)!r}); "
            "import nova.virt.libvirt.volume.iscsi as v; print(v.connector.__name__)")
    assert run(code, {"BLOCKLINK_OS_BRICK": "1"}) == "blocklink.compat.os_brick.initiator.connector"
    assert run(code, {"BLOCKLINK_OS_BRICK": "0"}) == "os_brick.initiator.connector"


@pytest.mark.parametrize("facade", [True, False], ids=["facade", "os-brick"])
def test_nova_volume_connector_is_a_connector_cinder_accepts(scenario: Any, facade: bool) -> None:
    """LibvirtDriver.get_volume_connector -> a dict blocklink's target side and Cinder's LIO target
    driver (``LioAdm.validate_connector`` / ``initialize_connection``) accept."""
    from blocklink.connection import HostConnector

    res = scenario("nova_volume_connector", facade=facade)
    props = res["connector"]
    assert res["library"] == ("blocklink.compat.os_brick" if facade else "os_brick")
    host = HostConnector.from_dict(props)
    assert host.to_dict() == props
    assert props["os_type"] == "linux" and props["multipath"] is False and "initiator" in props
    assert res["multipath_running"] is False  # no multipathd on this host
    # Cinder's own target side (LioAdm) accepts it, single path and multipath
    iqn = "iqn.2010-10.org.openstack:volume-c0ffee"
    volume = {"id": "c0ffee", "name": "volume-c0ffee", "provider_location": f"127.0.0.1:3260;127.0.0.2:3260,1 {iqn} 1",
              "provider_auth": "CHAP chapuser chap-secret-1234"}
    for multipath in (False, True):
        cinder = scenario("cinder_lio_initialize_connection", facade=facade, volume=volume,
                          connector=dict(props, multipath=multipath))
        assert cinder["valid"] is True
        assert ["cinder-rtstool", "add-initiator", iqn, "chapuser", "***", props["initiator"]] in cinder["calls"]
        info = cinder["connection_info"]
        assert info["driver_volume_type"] == "iscsi" and info["data"]["target_iqn"] == iqn
        assert info["data"]["target_portals"] == ["127.0.0.1:3260", "127.0.0.2:3260"]
        HostConnector.from_dict(dict(props, multipath=multipath))


def test_cinder_connector_properties_equal_os_brick_s(scenario: Any) -> None:
    """Cinder's brick_get_connector_properties gives the same dict on both libraries (less the keys of
    LightOS, a connector the facade refuses)."""
    facade = scenario("cinder_connector_properties", facade=True, cinder={"my_ip": "127.0.0.1"})
    real = scenario("cinder_connector_properties", facade=False, cinder={"my_ip": "127.0.0.1"})
    assert (facade["library"], real["library"]) == ("blocklink.compat.os_brick", "os_brick")
    props, expected = facade["connector"], real["connector"]
    for lightos_only in ("found_dsc", "host_ips"):
        expected.pop(lightos_only, None)
    assert props == expected
    assert props["ip"] == "127.0.0.1" and props["do_local_attach"] is False
    with open("/etc/iscsi/initiatorname.iscsi") as f:
        assert props["initiator"] == f.read().split("=", 1)[1].strip()
    with open("/etc/nvme/hostnqn") as f:
        assert props["nqn"] == f.read().strip()


def test_nova_skips_drivers_of_connectors_blocklink_lacks(scenario: Any) -> None:
    """Nova loads a volume driver on demand and skips its type when the factory raises
    InvalidConnectorProtocol: the facade raises exactly that, naming what it supports."""
    drivers = ["lightos.LibvirtLightOSVolumeDriver", "scaleio.LibvirtScaleIOVolumeDriver",
               "storpool.LibvirtStorPoolVolumeDriver"]
    res = scenario("nova_unsupported_drivers", facade=True, drivers=drivers)
    assert res["library"] == "blocklink.compat.os_brick"
    for ref in drivers:
        raised = res["raised"][ref]
        assert raised["error"] == "InvalidConnectorProtocol" and "ISCSI" in raised["message"], (ref, raised)
