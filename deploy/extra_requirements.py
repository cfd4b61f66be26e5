#!/usr/bin/env python3
"""Print the requirements of one extra of an installed distribution, one per line, for `pip install -r`.

deploy/Dockerfile.server installs this package with `pip install --no-deps` and then only its
`server` extra; `pip install '.[server]'` would also pull the base dependencies (torch, timm,
open_clip, ...), which only export and training need. The list has one source, pyproject.toml's
[project.optional-dependencies]; it is read back from the installed package's metadata, where
setuptools wrote it as `Requires-Dist: NAME==V; extra == "server"` (environment markers kept).
Standard library only: the container's Python 3.10 has no tomllib.

    python3 -m pip install --no-deps .
    python3 deploy/extra_requirements.py equiprobe server > server-requirements.txt
    python3 -m pip install -r server-requirements.txt
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

# The extra's own clause in a Requires-Dist marker, alone or and-ed with others:
#   `extra == "server"`, `python_version < "3.11" and extra == "server"`, `extra == "server" and ...`.
_CLAUSE = r'extra\s*==\s*["\']{}["\']'


def extra_requirements(distribution: str, extra: str) -> list[str]:
    """`distribution`'s requirements that only `extra` brings in, without the extra clause."""
    try:
        requires = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        raise SystemExit(f"{distribution} is not installed here (pip install --no-deps it first)")
    clause = _CLAUSE.format(re.escape(extra))
    found = []
    for line in requires:
        spec, _, marker = (part.strip() for part in line.partition(";"))
        if not re.search(clause, marker):
            continue
        rest = re.sub(rf"^\s*{clause}\s*$|\s+and\s+{clause}|{clause}\s+and\s+", "", marker).strip()
        if re.search(r"\bextra\b", rest):
            raise SystemExit(f"cannot read the marker of {line!r}: write the extra's markers without 'or'")
        found.append(f"{spec}; {rest}" if rest else spec)
    if not found:
        raise SystemExit(f"{distribution} has no requirements in an extra named {extra!r}")
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: extra_requirements.py DISTRIBUTION EXTRA", file=sys.stderr)
        return 2
    print("\n".join(extra_requirements(*argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
