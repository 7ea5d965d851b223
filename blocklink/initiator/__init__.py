"""Initiator side: one connector per protocol, plus the Linux host layer they share."""
