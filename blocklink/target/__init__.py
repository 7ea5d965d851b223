"""Target side: what a storage host does to export a volume and hand out connection info.

- :class:`blocklink.target.rbd.RbdTarget`: RBD images and Cinder-format RBD connection info.
- :class:`blocklink.target.nvmet.NvmetTarget`: NVMe/TCP exports through the kernel nvmet configfs tree.
- iSCSI helpers (LIO over rtslib-fb, tgtd over tgtadm) share :mod:`blocklink.target.base`.
"""
