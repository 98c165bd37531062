"""The mypyc build of the ingest hot paths: a stale build never runs, and CI tests the build."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from core.compiled import EXTENSION_SUFFIX, HOT_MODULES, built_files, drop_stale, has_c_compiler
from tests.conftest import IN_CI


def _fake_build(root: Path) -> list[Path]:
    built = [root / f"0123abcd__mypyc{EXTENSION_SUFFIX}"]
    for source in HOT_MODULES:
        (root / source).parent.mkdir(parents=True, exist_ok=True)
        (root / source).write_text("")
        built.append((root / source).with_suffix(EXTENSION_SUFFIX))
    for path in built:
        path.write_bytes(b"")
        os.utime(path, (2_000_000_000, 2_000_000_000))  # compiled after the sources
    return built


def test_a_current_build_is_kept(tmp_path):
    built = _fake_build(tmp_path)
    drop_stale(tmp_path)
    assert sorted(built_files(tmp_path)) == sorted(built)


def test_one_changed_source_drops_the_whole_build_and_keeps_every_source(tmp_path, capsys):
    built = _fake_build(tmp_path)
    changed = tmp_path / HOT_MODULES[-1]
    os.utime(changed, (2_000_000_100, 2_000_000_100))
    drop_stale(tmp_path)
    assert not any(path.exists() for path in built)
    assert all((tmp_path / source).exists() for source in HOT_MODULES)
    assert HOT_MODULES[-1] in capsys.readouterr().err


def test_ci_tests_the_compiled_hot_paths():
    # `make test` compiles them where a C compiler is, as on the CI machine; the suite must
    # then run the extensions, the code that ships.
    if not IN_CI:
        pytest.skip("checked in CI, where `make test` has just compiled them")
    assert has_c_compiler()
    for source in HOT_MODULES:
        module = importlib.import_module(source.removesuffix(".py").replace("/", "."))
        assert str(module.__file__).endswith(EXTENSION_SUFFIX), source
