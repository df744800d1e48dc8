"""`python -m meshfs`: the same as the `meshfs` command (the daemon re-executes itself this way).

Owns nothing but the entry point. Must not import anything but meshfs.cli.
"""

from meshfs.cli import main

raise SystemExit(main())
