"""The seed's attach sequence as one library call, with rollback, records and reconcile.

Attach, in order (each completed step is recorded before the next starts)::

    reserve        volume reservation: an ``attaching`` record, conditional (one exclusive winner)
    device_name    the guest device name (next free per bus, names held by other records excluded)
    connector      this host's connector properties
    export         the target's export (created here only if it did not exist)
    initialize     initialize_connection: ACL for this host's initiator, CHAP → connection info
    connect        connect_volume on this host (only for host-attached volumes)
    hypervisor     the libvirt <disk> (and its secret) hot-plugged into the domain
    → record status ``attached``

Detach runs it backwards. A failure at any step undoes every earlier step, marks the record
``error`` and raises :class:`AttachFailed` naming the step. A process killed mid-way leaves an
``attaching``/``detaching`` record whose owner is gone: :meth:`AttachFlow.reconcile` finishes or
rolls it back from what the record says was done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

from blocklink.attach.records import ACTIVE, Attachment, AttachmentStore
from blocklink.connection import AttachedDevice, ConnectionInfo, parse_connection_info
from blocklink.errors import AttachFailed, BlocklinkError, DetachFailed
from blocklink.masking import get_logger, mask_text
from blocklink.target.base import ExportingTargetHelper, TargetHelper
from blocklink.trace import Phases, span

LOG = get_logger(__name__)

STEPS = ("reserve", "device_name", "connector", "export", "initialize", "connect", "hypervisor")


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


class AttachFlow:
    """Compose a target helper per protocol, connectors and a :class:`LibvirtHost` into attach/detach.

    ``targets``: protocol → :class:`~blocklink.target.base.TargetHelper` (LioTarget, TgtTarget,
    NvmetTarget, RbdTarget, ...); one that is also an :class:`ExportingTargetHelper` gets an export first.
    ``connector_factory(protocol)`` returns the initiator connector for host-attached volumes.
    ``connector_properties()`` returns this host's connector dict. ``on_step(name, attachment)`` is
    called after each completed step (progress display; tests use it to inject faults).
    """

    def __init__(self, *, store: AttachmentStore, targets: Mapping[str, TargetHelper], hypervisor: Any,
                 connector_factory: Optional[Callable[[str], Any]] = None,
                 connector_properties: Optional[Callable[[], Dict[str, Any]]] = None,
                 on_step: Optional[Callable[[str, Attachment], None]] = None) -> None:
        self.store = store
        self.targets = dict(targets)
        self.hypervisor = hypervisor
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

    def _step(self, run: _Run, name: str, **fields: Any) -> None:
        run.record = self.store.record_step(run.record.id, name, **fields)
        run.done.append(name)
        if self.on_step is not None:
            self.on_step(name, run.record)

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
        phases.begin("reserve")
        record = self.store.reserve(spec.volume_id, instance, spec.attach_mode, spec.multiattach,
                                    extra={"protocol": spec.protocol, "host_attach": spec.host_attach,
                                           "bus": spec.bus})
        run = _Run(record=record, spec=spec)
        current = "reserve"
        try:
            self._step(run, "reserve", protocol=spec.protocol)
            current = phases.begin("device_name")
            run.device_name = self.hypervisor.next_device_name(instance, spec.bus,
                                                               reserved=self._reserved_names(instance))
            self._step(run, "device_name", device_name=run.device_name)
            current = phases.begin("connector")
            run.connector = self.connector_properties()
            self._step(run, "connector")
            target = self._target(spec.protocol)
            current = phases.begin("export")
            if isinstance(target, ExportingTargetHelper):  # iSCSI/NVMe export a device; RBD needs none
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
            self._step(run, "initialize", connection_info=run.info.to_dict())
            if spec.host_attach:
                current = phases.begin("connect")
                run.device = self._connector(spec.protocol).connect_volume(run.info)
                self._step(run, "connect", host_device=run.device.path,  # the WWN: for audits' mismatch check
                           extra=dict(run.record.extra, device_wwn=run.device.wwn))
            current = phases.begin("hypervisor")
            opts = dict(spec.disk_options)
            if spec.attach_mode == "ro":
                opts.setdefault("readonly", True)
            if spec.multiattach:
                opts.setdefault("shareable", True)
            if spec.protocol == "iscsi" and not spec.host_attach and run.connector.get("initiator"):
                # QEMU's own initiator logs in: it must use the name the target's ACL admits
                opts.setdefault("initiator_iqn", run.connector["initiator"])
            att = self.hypervisor.attach_volume(instance, run.info, run.device, bus=spec.bus,
                                                target_dev=run.device_name, **opts)
            run.secret_uuid = att.secret_uuid
            self._step(run, "hypervisor", extra=dict(run.record.extra, secret_uuid=att.secret_uuid,
                                                     disk_xml=att.xml))
            current = phases.begin("record")
            run.record = self.store.transition(record.id, ["attaching"], "attached", attached_at=time.time())
            phases.end()
            LOG.info("attached volume %s to %s as %s", spec.volume_id, instance, run.device_name)
            return run.record
        except BaseException as e:
            phases.end(e)
            # the failing step may have half-happened (an ACL added before the CHAP write failed, a
            # disk plugged before the confirmation timed out): undo it too; undos are idempotent
            if current in ("export", "initialize", "connect", "hypervisor") and current not in run.done:
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

        def undo(name: str, fn: Callable[[], Any]) -> None:
            try:
                fn()
            except Exception as e:  # keep undoing the rest; report this one
                failures.append(f"{name}: {type(e).__name__}: {mask_text(str(e))}")
                LOG.error("rollback of %s for volume %s failed: %s", name, spec.volume_id, e)

        if "hypervisor" in done:
            undo("hypervisor", lambda: self.hypervisor.detach_volume(instance, self._volume_attachment(run)))
        if "connect" in done and run.info is not None:
            undo("connect", lambda: self._connector(spec.protocol).disconnect_volume(run.info, run.device, force=True))
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
        return VolumeAttachment(disk, "", run.secret_uuid)

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
            if "hypervisor" in steps and self.hypervisor.find_disk(rec.instance, rec.device_name) is not None:
                self.hypervisor.detach_volume(rec.instance, self._volume_attachment(run))
            elif "hypervisor" in steps and run.secret_uuid:
                self._undefine_secret(run.secret_uuid)
            current = phases.begin("connect")
            if "connect" in steps and run.info is not None:
                self._connector(spec.protocol).disconnect_volume(run.info, run.device)
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
        spec = VolumeSpec(volume_id=rec.volume_id, protocol=rec.protocol or extra.get("protocol", ""),
                          multiattach=rec.multiattach, attach_mode=rec.attach_mode,
                          host_attach=bool(extra.get("host_attach")), bus=extra.get("bus", "virtio"))
        run = _Run(record=rec, spec=spec, device_name=rec.device_name, secret_uuid=extra.get("secret_uuid"),
                   export_created=bool(extra.get("export_created")), done=list(rec.steps))
        if rec.connection_info:
            run.info = parse_connection_info(rec.connection_info)  # secrets masked: detach needs none
        if rec.host_device:
            run.device = AttachedDevice(protocol=spec.protocol, path=rec.host_device)
        return run

    # ------------------------------------------------------------------ crash recovery
    def reconcile(self) -> List[Dict[str, Any]]:
        """Finish or roll back records whose owner process died mid-attach or mid-detach."""
        report: List[Dict[str, Any]] = []
        for rec in list(self.store.stuck()):
            if rec.status == "attaching":
                claimed = self.store.claim(rec.id, ["attaching"], "attaching")
                run = self._run_from_record(claimed)
                hv_present = (claimed.device_name is not None and "hypervisor" in claimed.steps
                              and self.hypervisor.find_disk(claimed.instance, claimed.device_name) is not None)
                if hv_present:  # every step was done; only the final record update was lost
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

    def _rollback_from_record(self, run: _Run, rec: Attachment) -> List[str]:
        # a step that started but was not recorded may have half-happened: undo it too, tolerantly
        done = list(rec.steps)
        idx = STEPS.index(done[-1]) if done and done[-1] in STEPS else 0
        pending = STEPS[idx + 1] if idx + 1 < len(STEPS) else None
        if pending in ("initialize", "connect", "hypervisor", "export"):
            done.append(pending)
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
