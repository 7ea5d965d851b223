"""Compatibility layers that let existing OpenStack code run on blocklink (see :mod:`.os_brick`)."""
