"""The suite's own disk use: what tests write goes once it has served (tests/conftest.py,
pyproject.toml), so that repeated runs do not fill the disk with full-size checkpoints."""

from __future__ import annotations

import os
import re
import tempfile

pytest_plugins = ["pytester"]

HERE = os.path.dirname(os.path.abspath(__file__))


def test_pyproject_drops_passing_tests_folders_and_old_runs():
    with open(os.path.join(HERE, "..", "pyproject.toml")) as f:
        text = f.read()  # (tomllib is Python 3.11+; the project runs on 3.10)
    options = text.split("[tool.pytest.ini_options]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^tmp_path_retention_policy = "failed"$', options, re.M), options
    assert re.search(r"^tmp_path_retention_count = 1$", options, re.M), options


def test_a_files_shared_folders_go_when_it_passes_and_stay_when_it_fails(pytester):
    with open(os.path.join(HERE, "conftest.py")) as f:
        pytester.makeconftest(f.read())
    fixture = """
import pytest

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    path = tmp_path_factory.mktemp("{name}") / "weights.bin"
    path.write_bytes(bytes(1024))
    return path

def test_one(shared):
    assert shared.stat().st_size == 1024

def test_two(shared):
    assert {ok}
"""
    pytester.makepyfile(
        test_a=fixture.format(name="passing", ok="True"),
        test_b=fixture.format(name="failing", ok="False"),
    )
    basetemp = pytester.path / "base"
    # The inner run's conftest points the caches and the temporary folder at folders of its own.
    environ, tempdir = dict(os.environ), tempfile.tempdir
    try:
        result = pytester.runpytest_inprocess(
            "-p", "no:xdist", "-p", "no:cacheprovider", f"--basetemp={basetemp}",
            "-o", "tmp_path_retention_policy=failed",
        )  # fmt: skip
    finally:
        os.environ.clear()
        os.environ.update(environ)
        tempfile.tempdir = tempdir
    result.assert_outcomes(passed=3, failed=1)
    left = sorted(p.name for p in basetemp.iterdir())
    assert not [name for name in left if name.startswith("passing")], left
    assert (basetemp / "failing0" / "weights.bin").stat().st_size == 1024
