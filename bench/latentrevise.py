"""Benchmark of the LatentRevise revision core: cost of a Frank-Wolfe step against its floor.

    python bench/latentrevise.py --device cpu --shape tiny
    python bench/latentrevise.py --device cuda --shape qwen2.5-math-1.5b --out gpu.json

A randomly initialized Qwen2 of the named shape (no download; qwen2.5-math-1.5b uses the real
Qwen2.5-Math-1.5B config values) in bf16 on CUDA / float32 on CPU, B failed rollouts of fixed
lengths (prompt Tx, prefix L, gold G, away A tokens). Reported, in one run:

  fw_step_ms      one Frank-Wolfe step (forward + input-gradient backward of 2B rows [Z; suffix] over
                  the cached prompt, logits at loss positions, chunked oracle, weight update), from the
                  difference of K2- and K1-step revisions (prompt prefill and discretization cancel)
  floor_ms        one plain forward+backward (weights trainable, full weight gradients, no
                  checkpointing, same rows, same cached prompt, same loss positions): the target is
                  fw_step_ms <= 1.3 x floor_ms
  tflops / %peak  useful FLOPs of a FW step / fw_step time (`useful_flops`): Z counted ONCE (the step runs
                  it in both the gold and the away row; the second pass is overhead, not useful work),
                  the gold and away suffixes once each; forward = 2*P_layers per token + attention
                  4*H*ctx per token and layer + lm_head 2*H*V per loss token; the input-gradient backward
                  (frozen weights: no weight-gradient matmuls) = the forward again for the linear layers
                  and lm_head, twice the forward for attention (dQ, dK, dV); + the oracle 2*N*H*V.
                  Checkpoint recomputation and padding are not counted. % of the device's dense bf16
                  peak (`PEAK_BF16_TFLOPS`, looked up by device name; --peak-tflops overrides)
  oracle memory   extra CUDA memory of the oracle per chunk size vs the N x V x 4 bytes of an
                  unchunked G E^T (CPU: the analytic bound only)
  resample        FTE (forward-token equivalents, methods/latentrevise/core.py) of one revision and the
                  wall time plain sampling (transformers, KV cache) needs to spend the same FTE

Imports only torch, transformers and the core file (the GPU machine has no vllm/sqlalchemy). The
numbers go to --out (JSON); bench/RESULTS.md holds the recorded ones.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {
    "tiny": dict(vocab_size=384, hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=3,
                 num_key_value_heads=1, tokenizer_len=384),
    "small": dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=2, tokenizer_len=8192),
    # Qwen/Qwen2.5-Math-1.5B config.json values (tokenizer: 151665 entries; E is padded to 151936 rows)
    "qwen2.5-math-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                              num_attention_heads=12, num_key_value_heads=2, tokenizer_len=151665,
                              max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-6),
}


# Dense (no 2:4 sparsity) bf16 tensor-core peak, TFLOP/s, by device name as torch reports it (first match
# wins, so the specific names come first). NVIDIA's datasheets give 1,979 (H100 SXM, H200) and 1,513 (H100 PCIe)
# "with sparsity", i.e. 989 and 756 dense: https://www.nvidia.com/en-us/data-center/h200/ and .../h100/ (H200:
# the same GH100 tensor cores and clocks as the H100 SXM; a third-party table of the same values:
# hmc-tech.com/gpu/nvidia-h100-vs-nvidia-h200-sxm-vs-nvidia-gb200); A100: 312 dense (624 with sparsity),
# https://www.nvidia.com/en-us/data-center/a100/. torch names the H100 SXM "NVIDIA H100 80GB HBM3".
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM5 (HBM3)
    ("H200", 989.0),
    ("A100", 312.0),
)


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of `device_name` (None when it is not in the table: no % of peak is claimed)."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key.lower() in device_name.lower()), None)


def load_core():
    try:
        from methods.latentrevise import core
        return core
    except ImportError:  # no sqlalchemy etc.: load the file alone
        spec = importlib.util.spec_from_file_location("lr_core", ROOT / "methods" / "latentrevise" / "core.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["lr_core"] = mod
        spec.loader.exec_module(mod)
        return mod


class StubTokenizer:
    """Length, specials and a gold string of exactly `gold_len` tokens: all the core needs."""

    def __init__(self, n: int, gold_len: int):
        self.n, self.gold_len, self.pad_token_id, self.all_special_ids = n, gold_len, 0, [0]

    def __len__(self) -> int:
        return self.n

    def __call__(self, text, add_special_tokens=False):
        return SimpleNamespace(input_ids=[1 + (7 * i + len(text)) % (self.n - 1) for i in range(self.gold_len)])

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(map(str, ids))


def build_model(shape: str, device: str):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    spec = dict(SHAPES[shape])
    tok_len = spec.pop("tokenizer_len")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cfg = Qwen2Config(tie_word_embeddings=True, **spec)
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    torch.set_default_dtype(old)
    return model.eval().requires_grad_(False), tok_len


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def make_items(core, a, V: int):
    g = torch.Generator().manual_seed(0)
    n_roll = a.prefix + a.away + 8
    return [core.ReviseItem(torch.randint(1, V, (a.prompt,), generator=g).tolist(),
                            torch.randint(1, V, (n_roll,), generator=g).tolist(), "123") for _ in range(a.batch)]


def floor_step(core, model, items, a, device: str):
    """One plain forward+backward over the FW step's rows (weights trainable) with the same cached prompt."""
    from transformers import DynamicCache

    B, L, T = a.batch, a.prefix, a.prefix + max(a.gold, a.away)
    decoder, head = model.model, model.lm_head
    x = torch.tensor([it.prompt_ids for it in items], device=device)
    rows = torch.tensor([it.rollout_ids[:T] for it in items] * 2, device=device)
    pos = torch.arange(a.prompt, a.prompt + T, device=device)[None].expand(2 * B, -1)
    loss_pos = torch.cat([torch.arange(L - 1, L - 1 + a.gold), torch.arange(L - 1, L - 1 + a.away)]).to(device)
    auto = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        with torch.no_grad(), auto:
            cache = DynamicCache(config=model.config)
            decoder(input_ids=x, past_key_values=cache, use_cache=True)
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys.repeat(2, 1, 1, 1), layer.values.repeat(2, 1, 1, 1)
            cache = core._frozen_prefix_cache(cache)
        model.requires_grad_(True)
        with auto:
            h = decoder(input_ids=rows, position_ids=pos, past_key_values=cache, use_cache=True).last_hidden_state
            sel = torch.cat([h[:B, : a.gold].reshape(-1, h.shape[-1]), h[B:, : a.away].reshape(-1, h.shape[-1])])
            logits = head(sel).float()
            tgt = torch.cat([rows[:B, L: L + a.gold].reshape(-1), rows[B:, L: L + a.away].reshape(-1)])
            loss = torch.nn.functional.cross_entropy(logits, tgt)
        loss.backward()
        model.zero_grad(set_to_none=True)
        model.requires_grad_(False)
        return loss_pos

    return step


def prefill(core, model, items, a, device):
    """The prompt-only part (measured apart so that the floor excludes it like the FW step does)."""
    from transformers import DynamicCache

    x = torch.tensor([it.prompt_ids for it in items], device=device)
    auto = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def run():
        with torch.no_grad(), auto:
            model.model(input_ids=x, past_key_values=DynamicCache(config=model.config), use_cache=True)
    return run


def layer_matmul_params(c) -> int:
    """Weights of the decoder layers' matmuls (q, k, v, o, gate, up, down), from a Qwen2 config."""
    kv = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    return c.num_hidden_layers * (2 * c.hidden_size * c.hidden_size + 2 * c.hidden_size * kv
                                  + 3 * c.hidden_size * c.intermediate_size)


def useful_flops(c, batch: int, prompt: int, prefix: int, gold: int, away: int) -> float:
    """Useful FLOPs of one Frank-Wolfe step (module docstring): Z once, each suffix once, oracle once."""
    H, V, n_layers = c.hidden_size, c.vocab_size, c.num_hidden_layers
    # (tokens, mean attended length) per segment: Z attends the prompt + itself causally, a suffix also all of Z
    segments = ((prefix, prompt + (prefix + 1) / 2), (gold, prompt + prefix + (gold + 1) / 2),
                (away, prompt + prefix + (away + 1) / 2))
    tokens = batch * sum(n for n, _ in segments)
    linear = 2 * layer_matmul_params(c) * tokens
    attention = 4 * H * n_layers * batch * sum(n * ctx for n, ctx in segments)
    head = 2 * H * V * batch * (gold + away)
    oracle = 2 * batch * prefix * H * V
    return 2 * linear + 3 * attention + 2 * head + oracle  # forward + input-gradient backward, + the oracle


def useful_tokens(batch: int, prefix: int, gold: int, away: int) -> int:
    """Tokens of useful work in one step: Z once, the gold and the away suffix once each."""
    return batch * (prefix + gold + away)


def sampling_fte_per_s(model, a, device: str, n_seq: int = 8, new_tokens: int = 64) -> float:
    """Plain sampling throughput in FTE/s (prompt + generated tokens), transformers with a KV cache."""
    ids = torch.randint(1, model.config.vocab_size, (n_seq, a.prompt), device=device)
    auto = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def run():
        with torch.no_grad(), auto:
            model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
                           pad_token_id=0, use_cache=True)
    s = timed(run, device, 1)
    return n_seq * (a.prompt + new_tokens) / s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shape", default="tiny", choices=list(SHAPES))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (default by shape)")
    ap.add_argument("--prefix", type=int, default=None, help="L")
    ap.add_argument("--gold", type=int, default=16)
    ap.add_argument("--away", type=int, default=None, help="failed-continuation tokens in the away term")
    ap.add_argument("--k1", type=int, default=2)
    ap.add_argument("--k2", type=int, default=6)
    ap.add_argument("--chunk", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="dense bf16 peak for %% of peak (default: PEAK_BF16_TFLOPS by device name)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", default=None, help="write a torch.profiler table of one revision (K=2) here")
    a = ap.parse_args()
    big = a.shape == "qwen2.5-math-1.5b"
    a.prompt = a.prompt or (256 if big else 32)
    a.prefix = a.prefix or (256 if big else 24)
    a.away = a.away or (128 if big else 24)
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    if a.device == "cpu":
        torch.set_num_threads(1)  # the shared 2-core box: more threads only spin
    core = load_core()
    dev = a.device
    res: dict = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "shape": a.shape,
                 "torch": torch.__version__, "batch": a.batch, "prompt": a.prompt, "prefix": a.prefix,
                 "gold": a.gold, "away": a.away, "chunk": a.chunk}
    import transformers

    res["transformers"] = transformers.__version__
    t0 = time.perf_counter()
    model, tok_len = build_model(a.shape, dev)
    res["build_s"] = time.perf_counter() - t0
    V, H = model.config.vocab_size, model.config.hidden_size
    tok = StubTokenizer(tok_len, a.gold)
    items = make_items(core, a, tok_len)
    print(f"{res['device']}  shape={a.shape}  B={a.batch} Tx={a.prompt} L={a.prefix} G={a.gold} A={a.away}", flush=True)

    def revise(k: int, ckpt: bool | None, chunk: int = a.chunk):
        cfg = core.ReviseConfig(fw_steps=k, prefix_len=a.prefix, away_max_tokens=a.away, revise_batch=a.batch,
                                oracle_chunk=chunk, grad_checkpointing=ckpt, eval_final=False)
        reviser = core.Reviser(model, tok, cfg)
        return lambda: reviser.revise(items)

    ckpt_default = core.Reviser(model, tok, core.ReviseConfig()).checkpointing
    variants = [("default", None)] + ([("no-checkpointing", False)] if dev == "cuda" else [])
    for name, ck in variants:
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t1 = timed(revise(a.k1, ck), dev, a.repeats)
        t2 = timed(revise(a.k2, ck), dev, a.repeats)
        step = (t2 - t1) / (a.k2 - a.k1)
        res[f"fw_step_ms[{name}]"] = 1e3 * step
        res[f"revise_k10_s[{name}]"] = t1 + (10 - a.k1) * step
        if dev == "cuda":
            res[f"peak_mem_gib[{name}]"] = torch.cuda.max_memory_allocated() / 2**30
        ck_shown = ck if ck is not None else ckpt_default
        print(f"FW step ({name}, checkpointing={ck_shown}): {1e3 * step:.1f} ms", flush=True)
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        run = revise(a.k1, None)
        run()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
        with profile(activities=acts) as prof:
            run()
            sync(dev)
        key = "cuda_time_total" if dev == "cuda" else "cpu_time_total"
        Path(a.profile).write_text(prof.key_averages().table(sort_by=key, row_limit=25))
    floor = (timed(floor_step(core, model, items, a, dev), dev, a.repeats)
             - timed(prefill(core, model, items, a, dev), dev, a.repeats))
    res["floor_fwd_bwd_ms"] = 1e3 * floor
    step = res["fw_step_ms[default]"] / 1e3
    res["ratio_fw_to_floor"] = step / floor
    fl = useful_flops(model.config, a.batch, a.prompt, a.prefix, a.gold, a.away)
    peak = a.peak_tflops or (peak_tflops(res["device"]) if dev == "cuda" else None)
    res["fw_step_useful_tflop"] = fl / 1e12
    res["tflops"] = fl / step / 1e12
    res["peak_tflops"] = peak
    res["pct_peak"] = 100 * res["tflops"] / peak if peak else None
    res["tokens_per_s"] = useful_tokens(a.batch, a.prefix, a.gold, a.away) / step
    print(f"floor (plain fwd+bwd, same rows): {1e3 * floor:.1f} ms   ratio FW/floor = {res['ratio_fw_to_floor']:.2f}"
          f"   {res['tflops']:.1f} useful TFLOP/s" + (f" = {res['pct_peak']:.0f}% of {peak:.0f}" if peak else "")
          + f"   {res['tokens_per_s']:.0f} useful tok/s", flush=True)

    # oracle memory: bounded by the chunk, not by N x V
    N = a.batch * a.prefix
    res["oracle_unchunked_mib"] = N * V * 4 / 2**20
    G = torch.randn(N, H, device=dev)
    E = model.get_input_embeddings().weight
    for chunk in (4096, 16384, 65536):
        if dev == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            core.lmo(G, E, chunk)
            torch.cuda.synchronize()
            extra = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            extra = None
        # scores in the model dtype + their float32 copy, one chunk alive at a time, + the cast gradient
        bound = (N * min(chunk, V) * (4 + E.element_size()) + N * H * E.element_size()) / 2**20
        res[f"oracle_extra_mib[chunk={chunk}]"] = extra
        res[f"oracle_bound_mib[chunk={chunk}]"] = bound
        shown = "n/a (cpu)" if extra is None else f"{extra:.0f}"
        print(f"oracle chunk={chunk}: extra {shown} MiB, bound {bound:.0f} MiB,"
              f" unchunked {res['oracle_unchunked_mib']:.0f} MiB", flush=True)

    # the same compute spent by resample
    reviser = core.Reviser(model, tok, core.ReviseConfig(fw_steps=10, prefix_len=a.prefix, away_max_tokens=a.away))
    rows = 2 * a.prefix + a.gold + a.away
    fte_rev = reviser.fte(a.prompt, a.prefix, rows, 2)
    m, cont = 4, a.away  # 4 continuations per mode, two modes, as long as the away window
    fte_cont = 2 * m * (a.prompt + a.prefix + cont)
    fte_per_rollout = fte_rev + fte_cont
    rate = sampling_fte_per_s(model, a, dev)
    res.update({"fte_revision": fte_rev, "fte_continuations": fte_cont, "fte_per_revised_rollout": fte_per_rollout,
                "sampling_fte_per_s": rate,
                "lr_revision_s_per_rollout": res["revise_k10_s[default]"] / a.batch,
                "lr_continuation_s_per_rollout": fte_cont / rate,
                "resample_s_same_fte": fte_per_rollout / rate,
                "resample_samples_same_fte": fte_per_rollout / (a.prompt + a.prefix + cont)})
    print(f"per revised rollout: {fte_per_rollout:.0f} FTE (revision {fte_rev:.0f} + continuations {fte_cont:.0f});"
          f" LatentRevise {res['lr_revision_s_per_rollout'] + res['lr_continuation_s_per_rollout']:.3f} s"
          f" vs resample {res['resample_s_same_fte']:.3f} s for {res['resample_samples_same_fte']:.1f} samples"
          f" (sampling {rate:.0f} FTE/s, transformers; per rescued prompt divide by the rescue rate)", flush=True)
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
