"""The seed's attach sequence as one library call, with rollback, records and reconcile.

Attach, in order (each completed step is recorded before the next step that changes anything starts;
steps that change nothing outside the record are recorded with the step after them, one commit; the
connector properties are read just before the device name is chosen)::

    reserve        volume reservation: an ``attaching`` record, conditional (one exclusive winner)
    device_name    the guest device name (next free per bus, names held by other records excluded)
    connector      this host's connector properties
    export         the target's export (created here only if it did not exist)
    initialize     initialize_connection: ACL for this host's initiator, CHAP → connection info
    connect        connect_volume on this host (only for host-attached volumes)
    encrypt        host-side LUKS (an encrypted host-attached volume): dm-crypt opened over the
                   connected device (formatted only for a new blank volume); the flow's device is
                   ``/dev/mapper/crypt-<volume id>`` from here on
    stage          (a staged volume) its filesystem mounted on ``staging_path`` (made only on a
                   blank device; a device with any signature is never formatted)
    publish        (a staged volume with ``publish_path``) the staging mount bind-mounted there
    hypervisor     the libvirt <disk> (and its secret) hot-plugged into the domain (not for a staged
                   volume: staging is for hosts without a hypervisor)
    → record status ``attached``

Detach runs it backwards: domain → unpublish → unstage → dm-crypt closed → disconnect → ACL → export.
A failure at any step undoes every earlier step, marks the record ``error`` and raises :class:`AttachFailed` naming the step. A process killed mid-way leaves an
``attaching``/``detaching`` record whose owner is gone: :meth:`AttachFlow.reconcile` finishes or
rolls it back from what the record says was done. Every host-side undo (unpublish, unstage, closing
the mapping, disconnect) is idempotent, so a re-run after a partial detach or rollback is safe; a layer
that cannot be undone (a busy mount, a held mapping) stops the undo of the layers beneath it (the
device stays connected under an open mapping rather than being pulled from under it).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from blocklink.attach.records import ACTIVE, Attachment, AttachmentStore
from blocklink.connection import AttachedDevice, ConnectionInfo, parse_connection_info
from blocklink.errors import AttachFailed, BlocklinkError, DetachFailed, InvalidEncryption, InvalidOption
from blocklink.masking import get_logger, mask_text
from blocklink.target.base import ExportingTargetHelper, TargetHelper
from blocklink.trace import Phases, span

LOG = get_logger(__name__)

# the steps of a plain attach (every volume goes through them, "connect" only when host-attached)
STEPS = ("reserve", "device_name", "connector", "export", "initialize", "connect", "hypervisor")
# every step in its order, the optional host-side layers included
ALL_STEPS = ("reserve", "device_name", "connector", "export", "initialize", "connect", "encrypt", "stage",
             "publish", "hypervisor")
# steps that may have half-happened when they failed: undone too, idempotently (a failed stage or publish
# is undone by the stager itself: the flow must not unmount what may be another volume's mount)
_UNDOABLE = ("export", "initialize", "connect", "encrypt", "hypervisor")
# ... and when their process died: a stage/publish only if the mount there is this volume's
_UNDOABLE_KILLED = _UNDOABLE + ("stage", "publish")


@dataclass(frozen=True)
class VolumeSpec:
    """What to attach. ``host_attach``: connect on this host and give the VM the device (os-brick's
    way); otherwise QEMU opens the volume itself (network disk: rbd, iscsi)."""

    volume_id: str
    protocol: str
    device_path: Optional[str] = None  # the backing device/file an iSCSI target exports
    size: Optional[int] = None
    multiattach: bool = False
    attach_mode: str = "rw"
    host_attach: bool = False
    bus: str = "virtio"
    disk_options: Mapping[str, Any] = field(default_factory=dict)
    # encryption: Nova's/Cinder's ``encryption`` dict (or an EncryptionSpec); with ``host_attach`` the
    # host opens it with dm-crypt (the key from the flow's key manager), else QEMU does (libvirt secret)
    encryption: Optional[Any] = None
    encryption_options: Mapping[str, Any] = field(default_factory=dict)  # EncryptionSpec fields (PBKDF cost)
    new_volume: bool = False  # a new blank volume: the encryptor may format it (never one with a signature)
    # staging (a host without a hypervisor, a node agent): mount the volume's filesystem here
    staging_path: Optional[str] = None
    fs_type: str = "ext4"
    mount_options: Sequence[str] = ()
    mkfs_options: Sequence[str] = ()
    publish_path: Optional[str] = None  # bind-mount the staged filesystem here too
    publish_readonly: bool = False

    def encryption_spec(self) -> Optional[Any]:
        """The parsed :class:`~blocklink.encryption.EncryptionSpec`, or None when nothing is encrypted
        (no dict, a no-op provider, or ``control_location='back-end'``)."""
        if self.encryption is None:
            return None
        from blocklink.encryption import EncryptionSpec, spec_from_dict

        if isinstance(self.encryption, EncryptionSpec):
            es = self.encryption.with_options(**self.encryption_options)
        else:
            es = spec_from_dict(self.encryption, **self.encryption_options)
        return es if es.host_side else None

    @property
    def staged(self) -> bool:
        return self.staging_path is not None

    def plan(self, host_encrypt: Optional[bool] = None) -> Tuple[str, ...]:
        """The steps this volume's attach goes through, in order."""
        if host_encrypt is None:
            host_encrypt = self.host_attach and self.encryption_spec() is not None
        return tuple(s for s in ALL_STEPS if not (
            (s in ("device_name", "hypervisor") and self.staged)
            or (s == "connect" and not self.host_attach)
            or (s == "encrypt" and not host_encrypt)
            or (s == "stage" and not self.staged)
            or (s == "publish" and not (self.staged and self.publish_path))))


@dataclass
class _Run:
    """What one attach has done so far (mirrors the record's steps)."""

    record: Attachment
    spec: VolumeSpec
    connector: Optional[Dict[str, Any]] = None
    export_created: bool = False
    info: Optional[ConnectionInfo] = None
    device: Optional[AttachedDevice] = None
    device_name: Optional[str] = None
    secret_uuid: Optional[str] = None
    done: List[str] = field(default_factory=list)
    extra_export_absent: bool = False  # the export did not exist when this attach looked
    lower: Optional[AttachedDevice] = None  # what connect_volume returned (below dm-crypt, if encrypted)
    encryption: Optional[Any] = None  # the EncryptionSpec (host-side or QEMU-native)
    key: Optional[Any] = None  # its passphrase (a Secret; in memory only, never recorded)
    encryption_secret_uuid: Optional[str] = None  # the libvirt LUKS secret of a QEMU-native encrypted disk
    host_encrypt: bool = False


class AttachFlow:
    """Compose a target helper per protocol, connectors and a :class:`LibvirtHost` into attach/detach.

    ``targets``: protocol → :class:`~blocklink.target.base.TargetHelper` (LioTarget, TgtTarget,
    NvmetTarget, RbdTarget, ...); one that is also an :class:`ExportingTargetHelper` gets an export first.
    ``connector_factory(protocol)`` returns the initiator connector for host-attached volumes.
    ``connector_properties()`` returns this host's connector dict. ``on_step(name, attachment)`` is
    called after each completed step (progress display; tests use it to inject faults).

    Encrypted volumes need ``key_manager`` (a :class:`~blocklink.encryption.KeyManager`: the spec's
    ``encryption_key_id`` → passphrase); ``encryptor_factory(spec)`` builds the host-side encryptor
    (default :class:`~blocklink.encryption.LuksEncryptor`). Staged volumes use ``stager`` (default a
    :class:`~blocklink.staging.Stager`); ``hypervisor`` may be None when only staged volumes are attached.
    """

    def __init__(self, *, store: AttachmentStore, targets: Mapping[str, TargetHelper], hypervisor: Any,
                 connector_factory: Optional[Callable[[str], Any]] = None,
                 connector_properties: Optional[Callable[[], Dict[str, Any]]] = None,
                 on_step: Optional[Callable[[str, Attachment], None]] = None,
                 key_manager: Optional[Any] = None,
                 encryptor_factory: Optional[Callable[[Any], Any]] = None,
                 stager: Optional[Any] = None) -> None:
        self.store = store
        self.targets = dict(targets)
        self.hypervisor = hypervisor
        self.key_manager = key_manager
        self.encryptor_factory = encryptor_factory  # None: LuksEncryptor, imported when first needed
        self._stager = stager
        if connector_factory is None:
            from blocklink.registry import connector_for

            connector_factory = connector_for
        self.connector_factory = connector_factory
        if connector_properties is None:
            from blocklink.initiator.properties import get_connector_properties

            connector_properties = get_connector_properties
        self.connector_properties = connector_properties
        self.on_step = on_step
        self._connectors: Dict[str, Any] = {}

    # ------------------------------------------------------------------ helpers
    def _target(self, protocol: str) -> TargetHelper:
        try:
            return self.targets[protocol]
        except KeyError:
            raise BlocklinkError(f"no target helper configured for protocol {protocol!r}") from None

    def _connector(self, protocol: str) -> Any:
        if protocol not in self._connectors:
            self._connectors[protocol] = self.connector_factory(protocol)
        return self._connectors[protocol]

    @property
    def stager(self) -> Any:
        if self._stager is None:
            from blocklink.staging import Stager

            self._stager = Stager()
        return self._stager

    def _encryptor(self, es: Any) -> Any:
        if self.encryptor_factory is None:
            from blocklink.encryption import LuksEncryptor

            self.encryptor_factory = LuksEncryptor
        return self.encryptor_factory(es)

    def _recorded_encryptor(self, run: _Run) -> Any:
        """The encryptor for an undo: closing a mapping needs no key and no format options."""
        from blocklink.encryption import EncryptionSpec

        if run.encryption is not None:
            return self._encryptor(run.encryption)
        fmt = (run.record.extra.get("encryption") or {}).get("format") or "luks2"
        return self._encryptor(EncryptionSpec(format=fmt))

    def _prepare(self, spec: VolumeSpec) -> Tuple[Optional[Any], Optional[Any]]:
        """Check the spec before anything is done: (encryption spec, key) — the key fetched up front so a
        missing key fails the attach before any connection is made."""
        if spec.staged:
            if not spec.host_attach:
                raise InvalidOption("staging_path", "staging needs a host-attached volume (host_attach=True)")
            if spec.publish_path is not None and spec.publish_path == spec.staging_path:
                raise InvalidOption("publish_path", "must differ from staging_path")
        elif self.hypervisor is None:
            raise InvalidOption("hypervisor", f"volume {spec.volume_id} is not staged: attaching it to an "
                                "instance needs a hypervisor")
        if spec.publish_path is not None and not spec.staged:
            raise InvalidOption("publish_path", "publishing needs a staging_path")
        es = spec.encryption_spec()
        if es is None:
            return None, None
        if self.key_manager is None:
            raise InvalidEncryption("key_manager", f"volume {spec.volume_id} is encrypted: the flow needs a "
                                    "key manager")
        if es.key_id is None:
            raise InvalidEncryption("encryption.encryption_key_id", "missing: the host cannot get the key")
        key = self.key_manager.get_key(es.key_id)
        if not key:
            raise InvalidEncryption("encryption.encryption_key_id", f"key {es.key_id!r} is empty")
        return es, key

    @staticmethod
    def _plan_extra(spec: VolumeSpec, es: Optional[Any], host_encrypt: bool) -> Dict[str, Any]:
        """What the record must know to undo the optional layers (never a key)."""
        from blocklink.encryption import mapping_name

        extra: Dict[str, Any] = {"protocol": spec.protocol, "host_attach": spec.host_attach, "bus": spec.bus}
        if es is not None:
            extra["encryption"] = {"format": es.format, "cipher": es.cipher, "key_size": es.key_size,
                                   "key_id": es.key_id, "host_side": host_encrypt,
                                   **({"mapping": mapping_name(spec.volume_id)} if host_encrypt else {})}
        if spec.staged:
            extra["staging"] = {"staging_path": spec.staging_path, "fs_type": spec.fs_type,
                                "mount_options": list(spec.mount_options), "publish_path": spec.publish_path,
                                "readonly": spec.publish_readonly}
        return extra

    def _step(self, run: _Run, name: str, **fields: Any) -> None:
        run.record = self.store.record_step(run.record.id, name, **fields)
        self._done(run, name)

    def _done(self, run: _Run, name: str) -> None:
        """``name`` is completed and recorded: note it, tell ``on_step``."""
        run.done.append(name)
        if self.on_step is not None:
            self.on_step(name, run.record)

    def _domain(self, instance: str) -> Any:
        """The hypervisor's handle of ``instance`` (a libvirt domain: one lookup instead of one per call)."""
        lookup = getattr(self.hypervisor, "lookup", None)
        return lookup(instance) if lookup is not None else instance

    def _reserved_names(self, instance: str) -> List[str]:
        return [a.device_name for a in self.store.list(instance=instance, statuses=ACTIVE) if a.device_name]

    # ------------------------------------------------------------------ attach
    def attach_volume(self, spec: VolumeSpec, instance: str) -> Attachment:
        phases = Phases(volume=spec.volume_id)
        with span("attach", volume=spec.volume_id, instance=instance, protocol=spec.protocol):
            try:
                return self._attach(spec, instance, phases)
            except BaseException as e:
                phases.end(e)  # a refused reservation fails before the steps' own handler
                raise

    def _attach(self, spec: VolumeSpec, instance: str, phases: Phases) -> Attachment:
        es, key = self._prepare(spec)
        host_encrypt = es is not None and spec.host_attach
        plan = spec.plan(host_encrypt)
        phases.begin("reserve")
        # the reservation is the reserve step: recorded by the insert itself (one commit, not two)
        record = self.store.reserve(spec.volume_id, instance, spec.attach_mode, spec.multiattach,
                                    extra=self._plan_extra(spec, es, host_encrypt), steps=("reserve",),
                                    protocol=spec.protocol)
        run = _Run(record=record, spec=spec, encryption=es, key=key, host_encrypt=host_encrypt)
        current = "reserve"
        try:
            self._done(run, "reserve")
            # Steps that change nothing outside the record (device name, connector properties; and for a
            # target that exports nothing, the export) are recorded together with the step after them,
            # in their order: a write per step costs a commit (an fsync) and the record still says, before
            # each step that changes something starts, everything done before it (what reconcile and
            # rollback need). The connector properties (pure) are read first so the device name is
            # recorded the moment it is chosen, as before (other attaches to the instance exclude it).
            current = phases.begin("connector")
            run.connector = self.connector_properties()
            domain: Any = instance
            if "device_name" in plan:
                current = phases.begin("device_name")
                domain = self._domain(instance)  # looked up once for the name and the hot-plug
                run.device_name = self.hypervisor.next_device_name(domain, spec.bus,
                                                                   reserved=self._reserved_names(instance))
                run.record = self.store.record_steps(run.record.id, ("device_name", "connector"),
                                                     device_name=run.device_name)
                self._done(run, "device_name")
                current = "connector"
                self._done(run, "connector")
            else:
                self._step(run, "connector")
            target = self._target(spec.protocol)
            current = phases.begin("export")
            exporting = isinstance(target, ExportingTargetHelper)  # iSCSI/NVMe export a device; RBD needs none
            if isinstance(target, ExportingTargetHelper):
                if target.get_export(spec.volume_id) is None:
                    run.extra_export_absent = True
                    target.create_export(spec.volume_id, spec.device_path, size=spec.size)
                    run.export_created = True
                self._step(run, "export", extra=dict(run.record.extra, export_created=run.export_created))
            current = phases.begin("initialize")
            info = target.initialize_connection(spec.volume_id, run.connector,
                                                **({"access_mode": spec.attach_mode}
                                                   if spec.protocol == "rbd" else {}))
            run.info = info if isinstance(info, ConnectionInfo) else parse_connection_info(info)
            if exporting:
                self._step(run, "initialize", connection_info=run.info.to_dict())
            else:  # the no-op export recorded with the initialize after it
                run.record = self.store.record_steps(
                    run.record.id, ("export", "initialize"), connection_info=run.info.to_dict(),
                    extra=dict(run.record.extra, export_created=False))
                current = "export"
                self._done(run, "export")
                current = "initialize"
                self._done(run, "initialize")
            if spec.host_attach:
                current = phases.begin("connect")
                run.device = run.lower = self._connector(spec.protocol).connect_volume(run.info)
                self._step(run, "connect", host_device=run.device.path,  # the WWN: for audits' mismatch check
                           extra=dict(run.record.extra, device_wwn=run.device.wwn))
            if "encrypt" in plan:
                current = phases.begin("encrypt")
                assert run.lower is not None
                run.device = self._encryptor(es).attach(run.lower, key, volume_id=spec.volume_id,
                                                        new_volume=spec.new_volume)
                enc = dict(run.record.extra.get("encryption") or {}, device=run.device.path,
                           lower_path=run.lower.path)
                self._step(run, "encrypt", extra=dict(run.record.extra, encryption=enc))
            if "stage" in plan:
                current = phases.begin("stage")
                staged = self.stager.stage(run.device, spec.staging_path, spec.fs_type, spec.mount_options,
                                           spec.mkfs_options)
                stg = dict(run.record.extra.get("staging") or {}, device=staged.device, fs_uuid=staged.fs_uuid,
                           formatted=staged.formatted)
                self._step(run, "stage", extra=dict(run.record.extra, staging=stg))
            if "publish" in plan:
                current = phases.begin("publish")
                self.stager.publish(spec.staging_path, spec.publish_path, spec.publish_readonly)
                self._step(run, "publish")
            if "hypervisor" in plan:
                current = phases.begin("hypervisor")
                opts = dict(spec.disk_options)
                if spec.attach_mode == "ro":
                    opts.setdefault("readonly", True)
                if spec.multiattach:
                    opts.setdefault("shareable", True)
                if spec.protocol == "iscsi" and not spec.host_attach and run.connector.get("initiator"):
                    # QEMU's own initiator logs in: it must use the name the target's ACL admits
                    opts.setdefault("initiator_iqn", run.connector["initiator"])
                if es is not None and not host_encrypt:  # a network disk: QEMU opens the LUKS volume
                    opts["encryption_passphrase"] = key
                att = self.hypervisor.attach_volume(domain, run.info, run.device, bus=spec.bus,
                                                    target_dev=run.device_name, **opts)
                run.secret_uuid = att.secret_uuid
                run.encryption_secret_uuid = getattr(att, "encryption_secret_uuid", None)
                self._step(run, "hypervisor", extra=dict(run.record.extra, secret_uuid=att.secret_uuid,
                                                         encryption_secret_uuid=run.encryption_secret_uuid,
                                                         disk_xml=att.xml))
            current = phases.begin("record")
            run.record = self.store.transition(record.id, ["attaching"], "attached", attached_at=time.time())
            phases.end()
            LOG.info("attached volume %s to %s as %s", spec.volume_id, instance,
                     run.device_name or (spec.publish_path or spec.staging_path))
            return run.record
        except BaseException as e:
            phases.end(e)
            # the failing step may have half-happened (an ACL added before the CHAP write failed, a
            # disk plugged before the confirmation timed out, a mapping opened before its node showed):
            # undo it too; undos are idempotent
            if current in _UNDOABLE and current not in run.done:
                run.done.append(current)
                if current == "export":
                    run.export_created = run.export_created or self._export_absent_before(run)
                if current == "hypervisor" and run.device_name and \
                        not self._disk_plugged(instance, run.device_name):
                    run.done.remove("hypervisor")
            with span("rollback", volume=spec.volume_id):
                failures = self._rollback(run, instance)
            try:
                self.store.transition(record.id, ["attaching"], "error",
                                      error=mask_text(f"{current}: {type(e).__name__}: {e}"))
            except BlocklinkError as store_err:
                failures.append(f"record: {store_err}")
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise AttachFailed(current, e, failures) from e

    def _rollback(self, run: _Run, instance: str) -> List[str]:
        """Undo the recorded steps in reverse; returns what could not be undone."""
        failures: List[str] = []
        spec = run.spec
        done = set(run.done)
        blocked: List[str] = []  # a host layer still in place: nothing beneath it is pulled away

        def undo(name: str, fn: Callable[[], Any], layer: bool = False) -> None:
            if blocked:
                failures.append(f"{name}: not undone, {blocked[0]} is still in place above it")
                return
            try:
                fn()
            except Exception as e:  # keep undoing the rest; report this one
                failures.append(f"{name}: {type(e).__name__}: {mask_text(str(e))}")
                LOG.error("rollback of %s for volume %s failed: %s", name, spec.volume_id, mask_text(str(e)))
                if layer:
                    blocked.append(name)

        if "hypervisor" in done:
            undo("hypervisor", lambda: self.hypervisor.detach_volume(instance, self._volume_attachment(run)))
        if "publish" in done and spec.publish_path:
            undo("publish", lambda: self.stager.unpublish(spec.publish_path), layer=True)
        if "stage" in done and spec.staging_path:
            undo("stage", lambda: self.stager.unstage(spec.staging_path), layer=True)
        if "encrypt" in done:
            undo("encrypt", lambda: self._recorded_encryptor(run).detach(spec.volume_id), layer=True)
        if "connect" in done and run.info is not None:
            undo("connect", lambda: self._connector(spec.protocol).disconnect_volume(run.info, run.lower,
                                                                                     force=True))
        target = self.targets.get(spec.protocol)
        if "initialize" in done and target is not None:
            undo("initialize", lambda: target.terminate_connection(spec.volume_id,
                                                                   run.connector or self.connector_properties()))
        if "export" in done and run.export_created and isinstance(target, ExportingTargetHelper):
            undo("export", lambda: target.remove_export(spec.volume_id))
        return failures

    def _disk_plugged(self, instance: str, device_name: str) -> bool:
        """Whether a failed hot-plug left the disk in the domain; a domain that is gone has none.

        Never raises: the rollback of every earlier step must run whatever libvirt answers here."""
        try:
            return self.hypervisor.find_disk(instance, device_name) is not None
        except BlocklinkError as e:
            gone = "domain not found" in str(e).lower() or "no domain with matching" in str(e).lower()
            LOG.warning("cannot tell whether %s still has %s (%s): %s", instance, device_name,
                        "domain gone" if gone else "will try to unplug", mask_text(str(e)))
            return not gone

    @staticmethod
    def _export_absent_before(run: _Run) -> bool:
        return run.extra_export_absent

    def _volume_attachment(self, run: _Run) -> Any:
        """What LibvirtHost.detach_volume needs: the target dev (and the secret it must remove)."""
        from blocklink.hypervisor.live import DiskAttachment, VolumeAttachment

        disk = DiskAttachment(domain="", target_dev=run.device_name or "", bus=run.spec.bus, alias=None,
                              live=True, config=False, elapsed_ms=0.0)
        return VolumeAttachment(disk, "", run.secret_uuid, run.encryption_secret_uuid)

    # ------------------------------------------------------------------ detach
    def detach_volume(self, attachment_id: str) -> Attachment:
        rec = self.store.transition(attachment_id, ["attached"], "detaching")
        return self._detach(rec)

    def _detach(self, rec: Attachment) -> Attachment:
        with span("detach", volume=rec.volume_id, instance=rec.instance, attachment=rec.id):
            return self._detach_steps(rec, Phases(volume=rec.volume_id))

    def _detach_steps(self, rec: Attachment, phases: Phases) -> Attachment:
        run = self._run_from_record(rec)
        spec = run.spec
        steps = set(rec.steps)
        current = phases.begin("hypervisor")
        try:
            domain = self._domain(rec.instance) if "hypervisor" in steps else rec.instance
            if "hypervisor" in steps and self.hypervisor.find_disk(domain, rec.device_name) is not None:
                self.hypervisor.detach_volume(domain, self._volume_attachment(run))
            elif "hypervisor" in steps:
                for uuid in (run.secret_uuid, run.encryption_secret_uuid):
                    if uuid:
                        self._undefine_secret(uuid)
            # the host-side layers, top down; each undo is idempotent (a re-run after a failure is safe)
            if "publish" in steps and spec.publish_path:
                current = phases.begin("publish")
                self.stager.unpublish(spec.publish_path)
            if "stage" in steps and spec.staging_path:
                current = phases.begin("stage")
                self.stager.unstage(spec.staging_path)
            if "encrypt" in steps:
                current = phases.begin("encrypt")
                self._recorded_encryptor(run).detach(spec.volume_id)
            current = phases.begin("connect")
            if "connect" in steps and run.info is not None:
                self._connector(spec.protocol).disconnect_volume(run.info, run.lower)
            target = self.targets.get(spec.protocol)
            current = phases.begin("initialize")
            if "initialize" in steps and target is not None:
                target.terminate_connection(spec.volume_id, run.connector or self.connector_properties())
            current = phases.begin("export")
            if run.export_created and isinstance(target, ExportingTargetHelper):
                target.remove_export(spec.volume_id)
        except Exception as e:
            phases.end(e)
            self.store.transition(rec.id, ["detaching"], "detaching", error=mask_text(f"{current}: {e}"))
            raise DetachFailed(current, e) from e
        phases.end()
        return self.store.transition(rec.id, ["detaching"], "detached", detached_at=time.time())

    def _undefine_secret(self, uuid: str) -> None:
        from blocklink.hypervisor.secrets import undefine_secret

        undefine_secret(self.hypervisor.connection, uuid)

    def _run_from_record(self, rec: Attachment) -> _Run:
        extra = rec.extra
        stg = extra.get("staging") or {}
        enc = extra.get("encryption") or {}
        spec = VolumeSpec(volume_id=rec.volume_id, protocol=rec.protocol or extra.get("protocol", ""),
                          multiattach=rec.multiattach, attach_mode=rec.attach_mode,
                          host_attach=bool(extra.get("host_attach")), bus=extra.get("bus", "virtio"),
                          staging_path=stg.get("staging_path"), fs_type=stg.get("fs_type") or "ext4",
                          mount_options=tuple(stg.get("mount_options") or ()), publish_path=stg.get("publish_path"),
                          publish_readonly=bool(stg.get("readonly")))
        run = _Run(record=rec, spec=spec, device_name=rec.device_name, secret_uuid=extra.get("secret_uuid"),
                   export_created=bool(extra.get("export_created")), done=list(rec.steps),
                   encryption_secret_uuid=extra.get("encryption_secret_uuid"),
                   host_encrypt=bool(enc.get("host_side")))
        if rec.connection_info:
            run.info = parse_connection_info(rec.connection_info)  # secrets masked: detach needs none
        if rec.host_device:
            run.device = run.lower = AttachedDevice(protocol=spec.protocol, path=rec.host_device)
        if enc.get("device"):
            run.device = AttachedDevice(protocol=spec.protocol, path=enc["device"])
        return run

    def _completed(self, rec: Attachment, run: _Run) -> bool:
        """Every step of the plan was done and is still in place (only the final record update was lost)."""
        plan = run.spec.plan(run.host_encrypt)
        if plan[-1] not in rec.steps:
            return False
        if plan[-1] == "hypervisor":
            return rec.device_name is not None and \
                self.hypervisor.find_disk(rec.instance, rec.device_name) is not None
        return all(os.path.ismount(p) for p in (run.spec.staging_path, run.spec.publish_path) if p)

    # ------------------------------------------------------------------ crash recovery
    def reconcile(self) -> List[Dict[str, Any]]:
        """Finish or roll back records whose owner process died mid-attach or mid-detach."""
        report: List[Dict[str, Any]] = []
        for rec in list(self.store.stuck()):
            if rec.status == "attaching":
                claimed = self.store.claim(rec.id, ["attaching"], "attaching")
                run = self._run_from_record(claimed)
                if self._completed(claimed, run):  # every step was done; only the final record update was lost
                    self.store.transition(rec.id, ["attaching"], "attached", attached_at=time.time())
                    report.append({"id": rec.id, "volume_id": rec.volume_id, "action": "completed"})
                    continue
                failures = self._rollback_from_record(run, claimed)
                self.store.transition(rec.id, ["attaching"], "error",
                                      error="rolled back by reconcile" + (f": {failures}" if failures else ""))
                report.append({"id": rec.id, "volume_id": rec.volume_id, "action": "rolled back",
                               "failures": failures})
            else:
                claimed = self.store.claim(rec.id, ["detaching"], "detaching")
                self._detach(claimed)
                report.append({"id": rec.id, "volume_id": rec.volume_id, "action": "detached"})
        return report

    def _mount_is(self, path: str, device: Optional[AttachedDevice]) -> bool:
        """Whether what is mounted on ``path`` is ``device``'s filesystem (True when nothing is: the
        idempotent undo then only tidies the mount point)."""
        from blocklink.hostpaths import HostPaths
        from blocklink.staging.mountinfo import MountTable

        paths = getattr(self.stager, "paths", None) or HostPaths()
        entry = MountTable.read(paths).at(os.path.normpath(path))
        if entry is None:
            return True
        if device is None or not device.path:
            return False
        try:
            st = os.stat(paths.from_host(device.path))
        except OSError:
            return False
        return (entry.major, entry.minor) == (os.major(st.st_rdev), os.minor(st.st_rdev))

    def _rollback_from_record(self, run: _Run, rec: Attachment) -> List[str]:
        # a step that started but was not recorded may have half-happened: undo it too, tolerantly
        done = list(rec.steps)
        plan = run.spec.plan(run.host_encrypt)
        idx = plan.index(done[-1]) if done and done[-1] in plan else 0
        pending = plan[idx + 1] if idx + 1 < len(plan) else None
        if pending in _UNDOABLE_KILLED:
            done.append(pending)
        spec = run.spec
        if "stage" in done and "stage" not in rec.steps and spec.staging_path and \
                not self._mount_is(spec.staging_path, run.device):
            done.remove("stage")
        if "publish" in done and "publish" not in rec.steps and spec.publish_path and \
                not self._mount_is(spec.publish_path, run.device):
            done.remove("publish")
        if run.connector is None:
            run.connector = self.connector_properties()
        run.done = done
        if "hypervisor" in done and run.device_name and \
                self.hypervisor.find_disk(rec.instance, run.device_name) is None:
            run.done.remove("hypervisor")
        if "connect" in done and run.info is None:
            run.done.remove("connect")
        if "export" in done and "export" not in rec.steps:
            # we cannot know whether the dead process created it; only remove it if no other record uses it
            run.export_created = not any(a.id != rec.id for a in self.store.list(volume_id=rec.volume_id,
                                                                                  statuses=ACTIVE))
        return self._rollback(run, rec.instance)
