"""Problems, by name: the five math benchmarks, the MATH train split and the synthetic arith family."""

from . import (
    arith,  # noqa: F401  (registers arith-easy/-medium/-hard/-train)
    math_sets,  # noqa: F401  (registers the hub/local benchmarks)
)
from .registry import (
    DATA_DIR_ENV,
    BenchmarkDataError,
    BenchmarkSpec,
    Problem,
    last_boxed,
    list_benchmarks,
    load_benchmark,
    load_jsonl,
    register,
    register_generated,
)

__all__ = [
    "DATA_DIR_ENV", "BenchmarkDataError", "BenchmarkSpec", "Problem", "list_benchmarks",
    "last_boxed", "load_benchmark", "load_jsonl", "register", "register_generated",
]
