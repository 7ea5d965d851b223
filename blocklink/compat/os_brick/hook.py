"""Imported from a ``.pth`` line (see the package docstring): activates the facade at interpreter start."""

from blocklink.compat.os_brick import activate

activate()
