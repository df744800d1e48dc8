"""meshfs: a FUSE filesystem for CS3 storage (Reva).

Package layout and import rules: see ARCHITECTURE (fuse/ is self-contained; cs3/ is the only user of
grpc, cs3apis and urllib3; vfs/ops.py is the one errno boundary).
"""

__version__ = "0.1.0"
