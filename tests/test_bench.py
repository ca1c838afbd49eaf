"""bench/latentrevise.py's honest count: useful FLOPs count the prefix once, % of peak uses the device's own
dense bf16 peak (looked up by name, none claimed for an unknown device)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_latentrevise", ROOT / "bench" / "latentrevise.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_latentrevise"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989.0),  # what torch calls the H100 SXM
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("Tesla T4", None),  # not in the table: no % of peak is claimed
])
def test_peak_by_device_name(bench, name, peak):
    assert bench.peak_tflops(name) == peak


def test_useful_flops_count_the_prefix_once(bench):
    """A hand count on a toy shape: H=4, I=8, 1 layer, 2 heads (head 2), 1 KV head, V=10; B=1, Tx=2, L=3, G=1, A=2."""
    c = SimpleNamespace(hidden_size=4, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=1, vocab_size=10)
    weights = 2 * 4 * 4 + 2 * 4 * 2 + 3 * 4 * 8  # q, o; k, v (KV dim 2); gate, up, down
    assert bench.layer_matmul_params(c) == weights == 144
    tokens = 3 + 1 + 2  # Z once, then the gold and the away suffix (not 2 rows of Z + suffix)
    linear = 2 * weights * tokens
    # attended lengths: Z 2 + (3+1)/2 = 4 per token; gold 2 + 3 + 1 = 6; away 2 + 3 + 1.5 = 6.5 per token
    attention = 4 * 4 * (3 * 4 + 1 * 6 + 2 * 6.5)
    head = 2 * 4 * 10 * (1 + 2)  # logits at the gold and away targets
    oracle = 2 * 3 * 4 * 10  # <G, E> over the vocabulary at every prefix position
    expected = 2 * linear + 3 * attention + 2 * head + oracle  # fwd + input-gradient bwd (attention: dQ, dK, dV)
    assert bench.useful_flops(c, 1, 2, 3, 1, 2) == pytest.approx(expected) == 5664
    assert bench.useful_tokens(1, 3, 1, 2) == tokens


def test_recorded_h100_figures_recompute(bench):
    """bench/RESULTS.md's corrected row: 172.7 ms per step at B=8 on the 1.5B shape = 113 useful TFLOP/s = 11.4 %."""
    spec = dict(bench.SHAPES["qwen2.5-math-1.5b"])
    spec.pop("tokenizer_len")
    c = SimpleNamespace(**spec)
    flops = bench.useful_flops(c, 8, 256, 256, 16, 128)
    assert flops / 0.1727 / 1e12 == pytest.approx(113, abs=0.5)
    assert 100 * flops / 0.1727 / 1e12 / bench.peak_tflops("NVIDIA H100 80GB HBM3") == pytest.approx(11.4, abs=0.05)
