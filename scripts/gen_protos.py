"""Generates the Python stubs in reelmill/v1 from protos/ (the one place they come from).

python scripts/gen_protos.py          # regenerate in place
python scripts/gen_protos.py --check  # exit 1 if the committed stubs differ from the protos
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE = Path("reelmill") / "v1"
HEADER = "# Generated from protos/ by scripts/gen_protos.py. Do not edit.\n"


def generate(out: Path) -> None:
    include = Path(protoc.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).glob("*.proto"))
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    if not plugin.exists():
        found = shutil.which("protoc-gen-mypy")
        if found is None:
            raise SystemExit("protoc-gen-mypy not found: install the dev extras (mypy-protobuf)")
        plugin = Path(found)
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for generated in (out / PACKAGE).iterdir():
        generated.write_text(HEADER + generated.read_text())
    (out / PACKAGE / "__init__.py").write_text(HEADER)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / PACKAGE).mkdir(parents=True)
        generate(out)
        target = ROOT / PACKAGE
        if args.check:
            fresh = {p.name for p in (out / PACKAGE).iterdir()}
            old = {p.name for p in target.iterdir() if p.is_file()} if target.exists() else set()
            _, mismatch, errors = filecmp.cmpfiles(
                out / PACKAGE, target, sorted(fresh), shallow=False
            )
            drift = sorted(set(mismatch) | set(errors) | (old ^ fresh))
            if drift:
                print("stubs out of date with protos/: " + ", ".join(drift), file=sys.stderr)
                print("run: python scripts/gen_protos.py", file=sys.stderr)
                return 1
            print("stubs in sync with protos/")
            return 0
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(out / PACKAGE, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
