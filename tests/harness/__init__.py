"""Test-only helpers of this checkout (not installed with blocklink): the real-kernel qemu guest harness
(``guest/``), the FCoE fabric used inside it (``fcoe.py``) and the leak checker / soak loop (``leaks.py``)."""
