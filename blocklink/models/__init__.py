"""The connection models, one module per protocol; :mod:`blocklink.connection` is their public face."""
