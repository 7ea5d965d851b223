"""The Linux host layer: sysfs/SCSI, iscsiadm, multipath, device waiting. No protocol policy."""
