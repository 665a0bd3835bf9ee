"""Regenerate (or, with --check, verify) the Python code of our protocols in `sidecar/_proto/`.

    .venv/bin/python proto/generate.py           # after editing a .proto: rewrite the committed gencode
    .venv/bin/python proto/generate.py --check   # exit 1 if the gencode does not encode the .proto files

The generated modules are committed so that `pip install -e .`, a wheel and CI need neither protoc nor
grpcio-tools (a test dependency) and no build hook; `tests/unit/authorizers/custom/test_remote_proto.py` runs
the check, so a .proto edited without regenerating fails the suite. The check compares what the code encodes
(its serialized FileDescriptorProto) with what grpcio-tools compiles from the .proto now, not the text, so a
newer grpcio-tools (whose text differs in its version stamp) does not fail it. Only message code is
generated (`--python_out`, `--pyi_out`): the service's one method is wired by name with grpc's generic
handlers (`sidecar/authorizers/custom/remote.py`, `sidecar/serve/lambda_host.py`), which keeps the gencode
free of imports between generated modules and so placeable anywhere.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
OUT = REPO / "sidecar" / "_proto"
PROTOS = ("authz_sidecar/custom/v1/custom.proto",)
"""Each .proto, relative to proto/ (its name in the descriptor pool); its code lands in OUT as <stem>_pb2.py."""


def _protoc(*args: str) -> None:
    from grpc_tools import protoc  # a test dependency: only this script and its test need it

    include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto shipped with grpcio-tools
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", *args])
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def generate(out: Path = OUT) -> list[Path]:
    """Compile every proto into `out` (flat: `custom_pb2.py`, `custom_pb2.pyi`); return the files written."""
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        _protoc(f"--python_out={tmp}", f"--pyi_out={tmp}", *PROTOS)
        for proto in PROTOS:
            for suffix in (".py", ".pyi"):
                name = Path(proto).stem + "_pb2" + suffix
                target = out / name
                shutil.copyfile(Path(tmp) / Path(proto).parent / name, target)
                written.append(target)
    return written


def stale(out: Path = OUT) -> list[str]:
    """The protos whose committed gencode in `out` does not encode the .proto as it is now (empty: up to date)."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for proto in PROTOS:
            names = [Path(proto).stem + "_pb2" + suffix for suffix in (".py", ".pyi")]
            missing = [name for name in names if not (out / name).exists()]
            if missing:
                problems.append(f"{proto}: {', '.join(missing)} missing from {_shown(out)}")
            elif _descriptor(out / names[0]) != _descriptor(Path(tmp) / names[0]):
                problems.append(f"{proto}: {_shown(out / names[0])} does not encode it (regenerate)")
    return problems


def _shown(path: Path) -> str:
    """`path` relative to the repository when it is inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _descriptor(module: Path) -> object:
    """The FileDescriptorProto a generated module registers, read from its source without importing it (an import
    would register it in the default pool under the same name as the package's own copy). Comparing these, not
    the text, lets a newer grpcio-tools (a different version stamp, the same encoding) pass the check."""
    import ast

    from google.protobuf import descriptor_pb2

    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
            and isinstance(node.args[0], ast.Constant)
        ):
            return descriptor_pb2.FileDescriptorProto.FromString(node.args[0].value)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed gencode is stale")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run: python proto/generate.py", file=sys.stderr)
        return 1 if problems else 0
    for path in generate():
        print(f"wrote {_shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
