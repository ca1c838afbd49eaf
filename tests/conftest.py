"""Shared fixtures: the local benchmark data, a throwaway database, a tiny random model, engines;
and the CI skip policy.

The tiny model here is random-initialized (tests need shapes, not skill); the tiny preset's
pretrained base model is built by repro/tiny/pretrain.py and tested in test_pretrain.py.

Skip policy: a skip hides an untested path, so in CI (`CI` set to true/1/yes, as .ci/run does) a
skip whose reason does not name CUDA or a GPU is reported as a failure. Only the GPU-only paths
may skip there (the CI machine has no GPU; they run in scripts/gpu_check.py when one is lent).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("LATENTREVISE_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()
HAS_VLLM = importlib.util.find_spec("vllm") is not None

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ALLOWED_CI_SKIP = re.compile(r"\bcuda\b|\bgpus?\b", re.I)  # the only skips CI accepts (module docstring)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason of a skipped report (pytest stores skips as (path, line, "Skipped: reason"))."""
    lr = report.longrepr
    return str(lr[2] if isinstance(lr, tuple) and len(lr) == 3 else lr).removeprefix("Skipped: ")


def unexpected_skip(report: pytest.TestReport | pytest.CollectReport) -> str | None:
    """In CI, the reason of a skip that is not a CUDA/GPU one (then the report is turned into a failure)."""
    if not (in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return None
    reason = skip_reason(report)
    return None if ALLOWED_CI_SKIP.search(reason) else reason


def _fail_unexpected_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = unexpected_skip(report)
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = f"unexpected skip in CI (only CUDA/GPU skips are allowed): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_unexpected_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_unexpected_skip(outcome.get_result())


def tiny_corpus() -> list[str]:
    words = "Problem Solution Compute What is the answer The final answer is step First then so".split()
    lines = [f"Problem: {a}+{b}\nSolution: {a}+{b}={a + b}. The final answer is \\boxed{{{a + b}}}."
             for a in range(0, 60, 3) for b in range(0, 40, 7)]
    return lines + [" ".join(words)] * 5


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: one torch thread is faster, and far faster on a shared, oversubscribed CPU."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (SHARED_DATA / "math500.jsonl").is_file():
        pytest.skip(f"benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from repro.tiny.model import build_random_model

    return build_random_model(tmp_path_factory.mktemp("tiny-model"), tiny_corpus())


@pytest.fixture(scope="session")
def vllm_generator(tiny_model_dir):
    """One vLLM engine for the whole session (engine start costs ~30 s on this CPU)."""
    if not HAS_VLLM:
        pytest.skip("vllm is not installed")
    from harness.generation import VLLMGenerator, VLLMSettings

    gen = VLLMGenerator(str(tiny_model_dir), VLLMSettings(dtype="float32", max_model_len=512))
    yield gen
    gen.close()


@pytest.fixture(scope="session")
def hf_generator(tiny_model_dir):
    from harness.generation import HFGenerator

    return HFGenerator(str(tiny_model_dir), None)


@pytest.fixture
def scoped_registry():
    """The method registry restored after the test: a third-party method registered by one test (a file, an
    entry point, a class) does not leak into another, whatever the import order."""
    from methods import registry

    saved = registry.snapshot()
    yield registry
    registry.restore(saved)


@pytest.fixture(scope="session")
def pg_admin():
    """The admin URL of a throwaway PostgreSQL server (tests/pgserver.py), skipped with the reason where
    none can start; one server for the whole session, each test makes its own database."""
    import pgserver

    reason = pgserver.unavailable()
    if reason:
        pytest.skip(reason)
    with pgserver.temp_server() as url:
        yield url
