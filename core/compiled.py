"""The ingest worker's pure-Python hot paths, compiled to C by mypyc where a C compiler is.

mypyc (part of mypy, which type-checks this code anyway) turns these fully annotated modules
into extension modules that sit beside their sources; Python imports an extension in
preference to the .py. Parsing costs about 15% less CPU per event, the whole worker about 5%
less (`python -m bench ingest` prints the worker's CPU per event). Without a C compiler
nothing is compiled and the same sources run as plain Python.

Compiled code holds the annotations to their word: a value of another type raises TypeError
where plain Python would carry on, so these modules annotate what they really accept.

An extension older than its source would run old code. `make` compiles again when a source
changes; `drop_stale()` (called before the tests and the `nurture` command import anything)
removes a stale build so the sources run until then. The modules form one group that calls
itself directly, so one stale module drops them all.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HOT_MODULES = (
    "capture/copy_text.py",
    "capture/enrichment.py",
    "capture/envelope.py",
    "capture/event_store.py",
    "capture/identity.py",
    "capture/parsing.py",
    "capture/profiles.py",
    "capture/resolution.py",
    "capture/visits.py",
)

EXTENSION_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def extension_of(source: str, root: Path = ROOT) -> Path:
    return (root / source).with_suffix(EXTENSION_SUFFIX)


def built_files(root: Path = ROOT) -> list[Path]:
    """The extensions of the hot modules and the group's shared library, where built."""
    shims = [extension_of(source, root) for source in HOT_MODULES]
    group = sorted(root.glob(f"*__mypyc{EXTENSION_SUFFIX}"))
    return [path for path in shims if path.exists()] + group


def stale_sources(root: Path = ROOT) -> list[str]:
    """Hot modules whose source changed after they were compiled."""
    stale = []
    for source in HOT_MODULES:
        extension = extension_of(source, root)
        if extension.exists() and extension.stat().st_mtime < (root / source).stat().st_mtime:
            stale.append(source)
    return stale


def is_compiled(root: Path = ROOT) -> bool:
    return all(extension_of(source, root).exists() for source in HOT_MODULES)


def drop_stale(root: Path = ROOT) -> None:
    stale = stale_sources(root)
    if not stale:
        return
    print(
        f"{', '.join(stale)} changed since compiled: running the sources as plain Python"
        " (`make compile` compiles them again)",
        file=sys.stderr,
    )
    for path in built_files(root):
        path.unlink(missing_ok=True)


def has_c_compiler() -> bool:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return shutil.which(compiler) is not None and headers.exists()


def compile_hot_paths() -> int:
    """Compiles the hot modules in place unless they are compiled and current. Returns 0
    whatever happens: without a build the same sources run as plain Python."""
    if is_compiled() and not stale_sources():
        make_group_importable()
        return 0
    if not has_c_compiler():
        print(
            "no C compiler or Python headers: the ingest hot paths run as plain Python,"
            " correct but slower",
            file=sys.stderr,
        )
        return 0
    for path in built_files():
        path.unlink(missing_ok=True)
    # A fresh build directory: setuptools would otherwise reuse objects by their times.
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    command = [sys.executable, "-m", "mypyc", *HOT_MODULES]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)  # noqa: S603 (our own interpreter and file list)
    if done.returncode != 0:
        # Slower, not broken: the service starts on the sources. CI checks that it compiled.
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
        print("mypyc failed: the ingest hot paths run as plain Python", file=sys.stderr)
        for path in built_files():
            path.unlink(missing_ok=True)
        return 0
    for path in built_files():
        path.touch()  # copied out of the build directory with its old time; it is new
    make_group_importable()
    return 0


def make_group_importable() -> None:
    """mypyc puts the group's shared library at the top level of the project, beside the
    packages; the editable install maps only the packages, so a path file adds the root."""
    path_file = Path(sysconfig.get_paths()["purelib"]) / "nurture-compiled.pth"
    path_file.write_text(f"{ROOT}\n")


if __name__ == "__main__":
    sys.exit(compile_hot_paths())
