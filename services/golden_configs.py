"""Golden configs: the config.pbtxt of every model of one encoder, in both flavours, as build_repo
writes them, committed under tests/golden/configs/FLAVOUR/MODEL/config.pbtxt so that a change to
a config shows in review. Rendered by services.repository.plan_repository, the function build_repo
writes its configs from, so no export, torch run or DALI serialization is needed. The one value
that comes from an export, NAME_embedK's onnx_sha256, is ONNX_SHA256_UNKNOWN here.

    python -m equiprobe.services.golden_configs --write tests/golden/configs   # regenerate
    python -m equiprobe.services.golden_configs --check tests/golden/configs   # compare; exit 1 on a difference

tests/test_golden_configs.py runs the comparison.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from .files import write_atomically
from .model_config import FLAVOURS
from .repository import plan_repository

ENCODER = "squeezenet1_1"  # the default encoder
CATALOGS = ("fine", "general", "groups", "detect")
REGENERATE = "python -m equiprobe.services.golden_configs --write tests/golden/configs"


def rendered(encoder: str = ENCODER, catalogs: tuple[str, ...] = CATALOGS) -> dict[str, str]:
    """'FLAVOUR/MODEL/config.pbtxt' -> the config's text, for every model of both flavours."""
    texts = {}
    for flavour in FLAVOURS:
        for family in plan_repository(encoder, flavour, catalogs=catalogs):
            for name, model in family.items():
                texts[f"{flavour}/{name}/config.pbtxt"] = model.text
    return texts


def committed(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(Path(root).glob("*/*/config.pbtxt"))}


def differences(root: Path, texts: Optional[dict[str, str]] = None) -> list[str]:
    """What differs between the goldens under ROOT and a fresh rendering (empty: identical)."""
    texts = rendered() if texts is None else texts
    found = committed(root)
    return ([f"missing {path}" for path in sorted(set(texts) - set(found))]
            + [f"stale {path} (no longer rendered)" for path in sorted(set(found) - set(texts))]
            + [f"differs {path}" for path in sorted(set(texts) & set(found)) if texts[path] != found[path]])


def write(root: Path) -> list[str]:
    """Rewrite the goldens under ROOT (stale ones removed); returns what changed."""
    root, texts = Path(root), rendered()
    changed = differences(root, texts)
    for path in committed(root):
        if path not in texts:
            (root / path).unlink()
            try:
                (root / path).parent.rmdir()
            except OSError:  # something else lives there: left alone
                pass
    for path, text in texts.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(root / path, text)
    return changed


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m equiprobe.services.golden_configs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", type=Path, metavar="DIR", help="regenerate the goldens under DIR")
    action.add_argument("--check", type=Path, metavar="DIR", help="compare the goldens under DIR")
    args = parser.parse_args(argv)
    if args.write:
        changed = write(args.write)
        print("\n".join(changed) if changed else "unchanged", f"({args.write})")
        return 0
    found = differences(args.check)
    print("\n".join(found) if found else "identical", f"({args.check})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
