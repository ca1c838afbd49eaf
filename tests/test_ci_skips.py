"""The CI skip policy of conftest.py: with CI=true an unexpected skip fails the run, a CUDA/GPU one does not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = '''
import pytest
pytestmark = pytest.mark.filterwarnings("ignore")

def test_vllm_missing():
    pytest.skip("vllm is not installed")

def test_cuda_missing():
    pytest.skip("needs CUDA")

@pytest.mark.skipif(True, reason="benchmark data not found")
def test_no_data():
    pass

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False

def test_ok():
    pass
'''
MODULE_SKIP = 'import pytest\npytest.importorskip("no_such_module_xyz")\n\ndef test_never():\n    pass\n'


def _run(tmp_path: Path, ci: str, source: str = DEMO) -> tuple[int, str]:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_demo.py").write_text(source)
    env = {**os.environ, "CI": ci}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_a_non_gpu_skip_fails_and_a_cuda_skip_does_not(tmp_path, ci):
    rc, out = _run(tmp_path, ci)
    assert rc == 1, out
    last = out.strip().splitlines()[-1]
    # vllm skip -> failed; data skip (in setup) -> error; CUDA stays skipped
    assert "1 failed" in last and "1 passed" in last and "1 skipped" in last and "1 xfailed" in last, last
    assert "1 error" in last, last
    assert "FAILED test_demo.py::test_vllm_missing - unexpected skip in CI" in out
    assert "SKIPPED [1] test_demo.py:9: needs CUDA" in out


def test_in_ci_an_import_skip_at_collection_fails(tmp_path):
    rc, out = _run(tmp_path, "true", MODULE_SKIP)
    assert rc != 0 and "ERROR test_demo.py - unexpected skip in CI" in out, out
    assert _run(tmp_path, "", MODULE_SKIP)[0] == 5  # outside CI: skipped, so "no tests ran"


def test_outside_ci_skips_stay_skips(tmp_path):
    rc, out = _run(tmp_path, "")
    last = out.strip().splitlines()[-1]
    assert rc == 0, out
    assert "1 passed" in last and "3 skipped" in last and "1 xfailed" in last, last
