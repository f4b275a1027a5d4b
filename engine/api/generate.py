"""Regenerate the Python code for `proto/ordinance/v1/*.proto` into `engine/api/`.

Usage: `python -m engine.api.generate [--out DIR]` (default: this package's directory).

protoc lays generated modules out by proto package (`ordinance/v1/decision_pb2.py`) and makes
`*_pb2_grpc.py` import their messages absolutely (`from ordinance.v1 import decision_pb2`),
which only works with `proto/`'s layout on `sys.path`. We flatten the modules into
`engine/api/` and rewrite those imports to package-relative ones, so `engine.api` works from
an installed wheel. The output is a pure function of the `.proto` files and the grpcio-tools
version; `tests/service/test_proto_codegen.py` fails when the committed code is stale.

This module only generates; it must not be imported by the service at run time.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
PROTO_PACKAGE = Path("ordinance") / "v1"
_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")
_ABSOLUTE_IMPORT = re.compile(r"^from ordinance\.v1 import (\w+_pb2)", re.MULTILINE)


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """The `.proto` sources, relative to `proto_root`, in a stable order."""
    return sorted(p.relative_to(proto_root) for p in (proto_root / PROTO_PACKAGE).glob("*.proto"))


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Generate the modules into `out_dir` (flat); return the written paths."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    sources = proto_files(proto_root)
    if not sources:
        raise SystemExit(f"no .proto files under {proto_root / PROTO_PACKAGE}")
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="ordinance-protoc-") as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(s) for s in sources),
        ]
        status = protoc.main(args)
        if status != 0:
            raise SystemExit(f"protoc failed with status {status}")
        out_dir.mkdir(parents=True, exist_ok=True)
        generated = Path(tmp) / PROTO_PACKAGE
        for path in sorted(generated.iterdir()):
            if not path.name.endswith(_SUFFIXES):
                continue
            text = _ABSOLUTE_IMPORT.sub(r"from . import \1", path.read_text())
            target = out_dir / path.name
            target.write_text(text)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PACKAGE_DIR)
    args = parser.parse_args(argv)
    for stale in args.out.glob("*_pb2*.py*"):
        if stale.name.endswith(_SUFFIXES):
            stale.unlink()
    for path in generate(args.out):
        print(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)
    shutil.rmtree(args.out / "__pycache__", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
