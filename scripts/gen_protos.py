"""Generates the code that comes from protos/ (the one contract), in the one place it comes from:

- the Python stubs in reelmill/v1 (grpcio-tools' protoc: messages, grpc stubs, mypy stubs);
- the TypeScript client's messages and service descriptors in clients/typescript/src/gen
  (`buf generate` with buf.gen.yaml: @bufbuild/protoc-gen-es, the client package's pinned
  devDependency, so `npm ci` in clients/typescript first; ./dev lint does).

python scripts/gen_protos.py          # regenerate both in place
python scripts/gen_protos.py --check  # exit 1 if what is committed differs from the protos
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE = Path("reelmill") / "v1"
HEADER = "# Generated from protos/ by scripts/gen_protos.py. Do not edit.\n"
TYPESCRIPT = Path("clients") / "typescript" / "src" / "gen"
PROTOC_GEN_ES = ROOT / "clients" / "typescript" / "node_modules" / ".bin" / "protoc-gen-es"


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


def generate_typescript(out: Path) -> None:
    """``buf generate`` with buf.gen.yaml, its output under ``out`` (as under the repo root)."""
    if not PROTOC_GEN_ES.exists():
        raise SystemExit(
            "protoc-gen-es not found: run `npm ci` in clients/typescript (./dev lint does)"
        )
    buf = Path(sys.executable).parent / "buf"
    if not buf.exists():
        found = shutil.which("buf")
        if found is None:
            raise SystemExit("buf not found: install the dev extras (buf-bin)")
        buf = Path(found)
    command = [str(buf), "generate", "--template", "buf.gen.yaml", "--output", str(out)]
    if subprocess.run(command, cwd=ROOT, check=False).returncode != 0:
        raise SystemExit("buf generate failed")


def _files(root: Path) -> set[str]:
    return (
        {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        if root.exists()
        else set()
    )


def drift(fresh: Path, committed: Path, *, recursive: bool) -> list[str]:
    """The files that differ between what was just generated and what is committed."""
    if recursive:
        new, old = _files(fresh), _files(committed)
    else:
        new = {p.name for p in fresh.iterdir()}
        old = {p.name for p in committed.iterdir() if p.is_file()} if committed.exists() else set()
    _, mismatch, errors = filecmp.cmpfiles(fresh, committed, sorted(new), shallow=False)
    return sorted(set(mismatch) | set(errors) | (old ^ new))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / PACKAGE).mkdir(parents=True)
        generate(out)
        generate_typescript(out)
        outputs = ((PACKAGE, False, "Python stubs"), (TYPESCRIPT, True, "TypeScript client"))
        if args.check:
            failed = False
            for path, recursive, what in outputs:
                changed = drift(out / path, ROOT / path, recursive=recursive)
                if changed:
                    print(
                        f"{what} ({path}) out of date with protos/: " + ", ".join(changed),
                        file=sys.stderr,
                    )
                    failed = True
                else:
                    print(f"{what} in sync with protos/")
            if failed:
                print("run: python scripts/gen_protos.py", file=sys.stderr)
                return 1
            return 0
        for path, _, _ in outputs:
            target = ROOT / path
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(out / path, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
