"""Run one piece of the real Nova or Cinder code in a fresh interpreter: ``python -m tests.compat.scenarios NAME``.

The arguments come as JSON on stdin (``facade``: run on blocklink's facade, else on the real
os-brick; the rest per scenario); the result is one JSON line on stdout. A fresh interpreter per
call because Nova and Cinder register the same global oslo.config options (they cannot share a
process), and because ``activate()`` must come before anything imports os_brick, as in a service.
Everything below calls Nova's and Cinder's own functions, unmodified.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import warnings
from typing import Any, Callable, Dict

warnings.simplefilter("ignore")  # eventlet's and oslo's deprecation noise on stderr

SCENARIOS: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {}


def scenario(fn: Callable[[Dict[str, Any]], Dict[str, Any]]) -> Callable[[Dict[str, Any]], Dict[str, Any]]:
    SCENARIOS[fn.__name__] = fn
    return fn


def _library(facade: bool) -> str:
    if facade:
        from blocklink.compat.os_brick import activate

        activate()
    import os_brick

    return str(os_brick.__name__)


def _services_setup(conf: Any, lock_path: str) -> None:
    """What nova-compute and cinder-volume do at start (``os_brick.setup(CONF)``); for the real os-brick
    also where its privsep helper is (the tests run as root: no sudo/rootwrap in front of it)."""
    import os_brick
    from oslo_concurrency import lockutils  # noqa: F401  (registers [oslo_concurrency] as the services' imports do)

    conf.set_override("lock_path", lock_path, group="oslo_concurrency")
    os_brick.setup(conf)
    if not os_brick.__name__.startswith("blocklink"):
        import os_brick.privileged  # noqa: F401  (registers the privsep_osbrick options)

        conf.set_override("helper_command", os.path.join(sys.prefix, "bin", "privsep-helper"), group="privsep_osbrick")


_OVERRIDES: list = []  # (name, group) set by the previous call in this interpreter


def _nova(args: Dict[str, Any]) -> Any:
    import nova.conf
    from nova import objects

    conf = nova.conf.CONF
    conf([], project="nova", default_config_files=[])
    _services_setup(conf, args["lock_path"])
    while _OVERRIDES:  # one interpreter serves several scenarios: each starts from Nova's defaults
        conf.clear_override(*_OVERRIDES.pop())
    conf.set_override("virt_type", "qemu", group="libvirt")
    for group, values in (("libvirt", args.get("nova_libvirt", {})), ("key_manager", args.get("key_manager", {}))):
        for k, v in values.items():
            conf.set_override(k, v, group=group)
            _OVERRIDES.append((k, group))
    objects.register_all()
    return objects.Instance(uuid=args.get("instance", "8d0b9ad6-5e23-4f0e-8a4b-0b8f0c3f1a11"))


def _cinder(args: Dict[str, Any]) -> Any:
    from cinder.common import config

    config.CONF([], project="cinder", default_config_files=[])
    _services_setup(config.CONF, args["lock_path"])
    for k, v in args.get("cinder", {}).items():
        config.CONF.set_override(k, v)
    return config.CONF


class NoLibvirtSecrets:
    """The one ``nova.virt.libvirt.host.Host`` method ``get_config`` calls (the volume's LUKS passphrase
    secret), for the kernel guest where no libvirtd runs: there is none."""

    def find_secret(self, usage_type: str, usage_id: str) -> None:
        return None


@scenario
def nova_rbd_config(args: Dict[str, Any]) -> Dict[str, Any]:
    """Nova's LibvirtNetVolumeDriver for Cinder's RBD connection info: the disk XML Nova would hot-plug."""
    library = _library(args["facade"])
    instance = _nova(args)
    from nova.virt.libvirt import host as nova_host
    from nova.virt.libvirt.volume import net

    host = nova_host.Host(args["libvirt_uri"])
    drv = net.LibvirtNetVolumeDriver(host)
    ci = args["connection_info"]
    drv.connect_volume(ci, instance)
    xml = drv.get_config(ci, args["disk_info"]).to_xml()
    return {"library": library, "xml": xml}


@scenario
def nova_volume_connector(args: Dict[str, Any]) -> Dict[str, Any]:
    """``LibvirtDriver.get_volume_connector`` (it uses no driver state) and Nova's multipath check."""
    library = _library(args["facade"])
    instance = _nova(args)
    from nova.virt.libvirt import driver

    props = driver.LibvirtDriver.get_volume_connector(None, instance)  # type: ignore[arg-type]
    return {"library": library, "connector": props,
            "multipath_running": driver.linuxscsi.LinuxSCSI.is_multipath_running(root_helper=None)}


@scenario
def nova_volume_driver(args: Dict[str, Any]) -> Dict[str, Any]:
    """One of Nova's libvirt volume drivers (``driver``: "iscsi.LibvirtISCSIVolumeDriver",
    "nvme.LibvirtNVMEVolumeDriver", ...): ``step`` "connect" (connect_volume + get_config), "extend"
    or "disconnect"."""
    import importlib

    library = _library(args["facade"])
    instance = _nova(args)
    module, _, cls = args["driver"].rpartition(".")
    drv = getattr(importlib.import_module(f"nova.virt.libvirt.volume.{module}"), cls)(NoLibvirtSecrets())
    ci = args["connection_info"]
    out: Dict[str, Any] = {"library": library, "connector_class": type(drv.connector).__module__}
    t0 = time.monotonic()
    if args["step"] == "connect":
        drv.connect_volume(ci, instance)
        out["seconds"] = time.monotonic() - t0  # the library's work, not the imports
        out["xml"] = drv.get_config(ci, args["disk_info"]).to_xml()
    elif args["step"] == "extend":
        out["new_size"] = drv.extend_volume(ci, instance, args["requested_size"])
    else:
        drv.disconnect_volume(ci, instance, force=args.get("force", False))
        out["seconds"] = time.monotonic() - t0
    out["connection_info"] = ci
    return out


class SecretsHost(NoLibvirtSecrets):
    """The libvirt secret calls of Nova's encryptor code (``find_secret``, ``create_secret``,
    ``delete_secret``), kept in memory: no libvirtd runs in the kernel guest. Nova's native-LUKSv1 path
    stores the volume's passphrase as such a secret; the test sees only its SHA-256."""

    secrets: Dict[Any, str] = {}

    def create_secret(self, usage_type: str, usage_id: str, password: Any = None, **kw: Any) -> None:
        import hashlib

        self.secrets[(usage_type, usage_id)] = hashlib.sha256(str(password).encode()).hexdigest()

    def delete_secret(self, usage_type: str, usage_id: str) -> None:
        self.secrets.pop((usage_type, usage_id), None)


@scenario
def nova_encryptor(args: Dict[str, Any]) -> Dict[str, Any]:
    """Nova's encryptor code for a connected volume (``connection_info.data.device_path`` set by the
    volume driver), with Nova's ``ConfKeyManager`` (``[key_manager] fixed_key``) as the key manager.

    ``steps`` in order: "prepare" (``LibvirtDriver._attach_encryptor`` for a LUKSv1 volume: Nova checks
    ``is_luks``, formats a volume that has no header with the encryptor's ``_format_volume`` and stores
    the passphrase as a libvirt secret), "attach" (``LibvirtDriver._get_volume_encryptor(...)
    .attach_volume`` — what ``_attach_encryptor`` calls for host-side encryption), "extend" (the
    encryptor's ``extend_volume``, as ``LibvirtDriver._resize_attached_encrypted_volume`` calls it),
    "detach" (``LibvirtDriver._detach_encryptor`` with no libvirt secret: the encryptor's
    ``detach_volume``)."""
    library = _library(args["facade"])
    _nova(args)
    from nova import context as nova_context
    from nova.virt.libvirt import driver
    from os_brick.encryptors import luks

    class Encryptors:  # the LibvirtDriver methods of this path; they use no other driver state
        L = driver.LibvirtDriver
        _attach_encryptor = L._attach_encryptor
        _detach_encryptor = L._detach_encryptor
        _allow_native_luksv1 = L._allow_native_luksv1
        _get_volume_encryptor = L._get_volume_encryptor
        _host = SecretsHost()

    drv: Any = Encryptors()
    ctx = nova_context.get_admin_context()
    ci, enc = args["connection_info"], args["encryption"]
    out: Dict[str, Any] = {"library": library}
    for step in args["steps"]:
        t0 = time.monotonic()
        if step == "prepare":
            drv._attach_encryptor(ctx, ci, enc)
            out["secrets"] = sorted(SecretsHost.secrets.values())
            SecretsHost.secrets.clear()
            out["is_luks"] = luks.is_luks(None, ci["data"]["device_path"])
        elif step == "attach":
            drv._get_volume_encryptor(ci, enc).attach_volume(ctx, **enc)
            out["encryptor"] = type(drv._get_volume_encryptor(ci, enc)).__module__
            out["device_path_target"] = os.path.realpath(ci["data"]["device_path"])
        elif step == "extend":
            out["new_size"] = drv._get_volume_encryptor(ci, enc).extend_volume(ctx, **enc)
        elif step == "detach":
            drv._detach_encryptor(ctx, ci, enc)
        else:
            raise ValueError(step)
        out[f"{step}_seconds"] = time.monotonic() - t0
    out["connection_info"] = ci
    return out


@scenario
def nova_unsupported_drivers(args: Dict[str, Any]) -> Dict[str, Any]:
    """Construct Nova's volume drivers for connectors blocklink lacks, as Nova's on-demand loading does
    (it skips a type whose constructor raises InvalidConnectorProtocol): what each raised."""
    import importlib

    library = _library(args["facade"])
    _nova(args)
    from os_brick import exception

    out: Dict[str, Any] = {}
    for ref in args["drivers"]:
        module, _, cls = ref.rpartition(".")
        try:
            getattr(importlib.import_module(f"nova.virt.libvirt.volume.{module}"), cls)(NoLibvirtSecrets())
            out[ref] = None
        except exception.InvalidConnectorProtocol as e:
            out[ref] = {"error": "InvalidConnectorProtocol", "message": str(e)}
    return {"library": library, "raised": out}


@scenario
def cinder_connector_properties(args: Dict[str, Any]) -> Dict[str, Any]:
    library = _library(args["facade"])
    _cinder(args)
    from cinder.volume import volume_utils

    return {"library": library, "connector": volume_utils.brick_get_connector_properties(
        args.get("multipath", False), enforce_multipath=False)}


@scenario
def cinder_attach_check_detach(args: Dict[str, Any]) -> Dict[str, Any]:
    """What Cinder's backup manager does with a volume (``_connect_device`` / ``_detach_device``), plus
    ``check_valid_device`` and a read of the first 4 KiB through the attached device."""
    library = _library(args["facade"])
    conf = _cinder(args)
    import hashlib

    from cinder.volume import volume_utils

    ci = args["connection_info"]
    connector = volume_utils.brick_get_connector(ci["driver_volume_type"], use_multipath=conf.use_multipath_for_image_xfer,
                                                 device_scan_attempts=conf.num_volume_device_scan_tries,
                                                 conn=ci, expect_raw_disk=True)
    device = connector.connect_volume(ci["data"])
    out = {"library": library, "device": {k: v for k, v in device.items() if isinstance(v, str)},
           "valid": connector.check_valid_device(device["path"], True),
           "connector_is_iscsi": type(connector).__name__}
    with open(device["path"], "rb") as f:
        out["head_sha256"] = hashlib.sha256(f.read(4096)).hexdigest()
    connector.disconnect_volume(ci["data"], device, force=True, ignore_errors=True)
    out["still_there"] = os.path.exists(device["path"])
    return out


@scenario
def cinder_lio_initialize_connection(args: Dict[str, Any]) -> Dict[str, Any]:
    """Cinder's LIO target driver (``cinder.volume.targets.lio.LioAdm``) given a connector:
    ``validate_connector`` then ``initialize_connection`` for an exported volume. The calls that would
    change the host's LIO configuration (``cinder-rtstool add-initiator``, ``save``) are recorded, not
    run (passwords masked)."""
    library = _library(args["facade"])
    _cinder(args)
    from cinder.volume import configuration
    from cinder.volume.targets import lio

    calls: list = []

    def rtstool(*argv: str, **kw: Any) -> Any:
        calls.append([a if a != args["volume"]["provider_auth"].split()[2] else "***" for a in argv])
        return "", ""

    lio.LioAdm._execute = staticmethod(rtstool)  # type: ignore[method-assign,assignment]
    # the constructor's `cinder-rtstool verify` (it imports rtslib) runs for real, from the venv as installed
    os.environ["PATH"] = os.path.join(sys.prefix, "bin") + os.pathsep + os.environ.get("PATH", "")
    target = lio.LioAdm(configuration=configuration.Configuration(None), root_helper="")
    connector = args["connector"]
    out: Dict[str, Any] = {"library": library, "valid": target.validate_connector(connector)}
    info = target.initialize_connection(args["volume"], connector)
    info["data"].pop("auth_password", None)
    out.update(connection_info=info, calls=calls)
    return out


def _cinder_db(args: Dict[str, Any]) -> Any:
    """A real Cinder database (SQLite, Cinder's own migrations) and an admin request context."""
    conf = _cinder(args)
    conf.set_override("connection", "sqlite:///" + args["db"], group="database")
    from cinder import context, objects
    from cinder.db import migration

    objects.register_all()
    migration.db_sync()
    return context.RequestContext("compat-user", "compat-project", is_admin=True)


def _volume(ctxt: Any, vid: str, gib: int) -> Any:
    from cinder import objects
    from cinder.db import api as db

    db.volume_create(ctxt, {"id": vid, "size": gib, "status": "available", "display_name": vid,
                            "host": "blocklink@ceph#ceph", "user_id": ctxt.user_id,
                            "project_id": ctxt.project_id, "attach_status": "detached",
                            "volume_type_id": db.volume_type_get_by_name(ctxt, "__DEFAULT__")["id"]})
    return objects.Volume.get_by_id(ctxt, vid)


@scenario
def cinder_ceph_backup_restore(args: Dict[str, Any]) -> Dict[str, Any]:
    """Cinder's Ceph backup driver backs an RBD volume up through the connector's handle, then restores
    it into a second volume (``backup_manager`` passes ``tpool_wrap(handle)`` the same way)."""
    library = _library(args["facade"])
    from cinder.backup.drivers import ceph  # registers the backup_ceph_* options set by _cinder_db

    ctxt = _cinder_db(args)
    from cinder import objects, utils
    from cinder.volume import volume_utils

    src = _volume(ctxt, args["source_id"], 1)
    dst = _volume(ctxt, args["restore_id"], 1)
    backup = objects.Backup(ctxt, volume_id=src.id, user_id=ctxt.user_id, project_id=src.project_id,
                            status="creating", container=None, size=1, host="backup-host",
                            service="cinder.backup.drivers.ceph.CephBackupDriver")
    backup.create()
    driver = ceph.CephBackupDriver(ctxt)
    result: Dict[str, Any] = {"library": library, "backup_id": backup.id}

    def through_handle(ci: Dict[str, Any], use: Callable[[Any], Any]) -> Any:
        connector = volume_utils.brick_get_connector("rbd", use_multipath=False, device_scan_attempts=3,
                                                     conn=ci, expect_raw_disk=True)
        device = connector.connect_volume(ci["data"])
        handle = device["path"]
        result.setdefault("handle", {"type": type(handle).__module__ + "." + type(handle).__name__,
                                     "rbd_pool": handle.rbd_pool, "rbd_user": handle.rbd_user,
                                     "has_rbd_image": hasattr(handle, "rbd_image"),
                                     "rbd_conf_exists": os.path.exists(handle.rbd_conf)})
        try:
            return use(utils.tpool_wrap(handle))
        finally:
            connector.disconnect_volume(ci["data"], device, force=True, ignore_errors=True)
            result.setdefault("rbd_conf_left", os.path.exists(handle.rbd_conf))

    result["backup_updates"] = through_handle(args["source"], lambda f: driver.backup(backup, f))
    backup.status = "available"
    backup.save()
    through_handle(args["restore"], lambda f: driver.restore(backup, dst.id, f, True))
    result["container"] = backup.container
    return result


def serve() -> None:
    """Requests ``{"name", "args"}`` one JSON line each on stdin, a ``{"result"}`` or ``{"error"}``
    line back for each, until stdin closes (the traceback of an error goes to stderr)."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the service code prints must not mix with the replies
    for line in sys.stdin:
        req = json.loads(line)
        try:
            reply: Dict[str, Any] = {"result": SCENARIOS[req["name"]](req["args"])}
        except BaseException as e:  # reported to the test, which fails with the traceback
            traceback.print_exc()
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def main() -> None:
    if sys.argv[1] == "serve":
        serve()
    else:
        result = SCENARIOS[sys.argv[1]](json.load(sys.stdin))
        sys.stdout.write("\n" + json.dumps(result) + "\n")
        sys.stdout.flush()
    os._exit(0)  # eventlet/privsep/rados threads of the service code must not hold the exit


if __name__ == "__main__":
    main()
