"""blocklink vs os-brick benchmarks (not part of the blocklink package; see README.md)."""
