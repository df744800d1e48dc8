"""Side-by-side benchmarks of the meshfs mount against rclone mount, davfs2, the local disk and raw
curl on the dev Reva (`make bench`, `python -m bench --help`). Not part of `make test`.

Files: __main__ (command line, round loop), rows (what is measured), targets (mounting each peer),
server (revactl, WebDAV, CS3 tickets for curl), dataset, probe (child-process I/O), report, sysutil.
bench/fuse_bench.py and bench/fuse_pyfuse3* belong to the FUSE-layer benchmark (another owner).
Must not import: meshfs, except server.py's use of the public meshfs.cs3 client for curl tickets.
"""
