"""PyTorch peer for `nativelora-bench roofline --peer torch`: causal GQA attention forward + backward at the given
shapes, in two ways a user of PyTorch would run it: scaled_dot_product_attention (on a GPU its flash backend) and
the materialised path (matmul, masked softmax, matmul; K/V repeated per query head as transformers' eager attention
does). Each is the median of timed repetitions (CUDA events) after warm-up, on fresh random inputs. Prints one JSON
line per shape: {"shape", "flash_ms", "math_ms", "flash_tflops", "math_tflops"}; FLOPs count the causal half:
3.5 x 2*B*H*T^2*D for forward + backward.

Usage: python3 attention_peer.py --device cuda --dtype bf16 --shape "B4 H32 KV8 T512 D128" [--shape ...]
"""
import argparse, json, re, time
import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--device", default="cuda")
p.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
p.add_argument("--shape", action="append", required=True)
p.add_argument("--reps", type=int, default=10)
a = p.parse_args()
dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[a.dtype]
dev = torch.device(a.device)


def timed(fn, reps):
    for _ in range(3):
        fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        if dev.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return times[len(times) // 2]


for shape in a.shape:
    B, H, KV, T, D = (int(x) for x in re.fullmatch(r"B(\d+) H(\d+) KV(\d+) T(\d+) D(\d+)", shape).groups())
    G = H // KV
    q = torch.randn(B, H, T, D, device=dev, dtype=dtype, requires_grad=True)
    k = torch.randn(B, KV, T, D, device=dev, dtype=dtype, requires_grad=True)
    v = torch.randn(B, KV, T, D, device=dev, dtype=dtype, requires_grad=True)
    do = torch.randn(B, H, T, D, device=dev, dtype=dtype)
    mask = torch.ones(T, T, device=dev, dtype=torch.bool).tril()

    def sdpa():
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        o.backward(do)

    def materialised():
        kk, vv = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
        s = (q @ kk.transpose(-1, -2)) * (D ** -0.5)
        s = s.masked_fill(~mask, float("-inf"))
        pr = torch.softmax(s.float(), dim=-1).to(dtype)
        o = pr @ vv
        o.backward(do)

    flops = 3.5 * 2.0 * B * H * T * T * D
    flash_ms = timed(sdpa, a.reps)
    math_ms = timed(materialised, a.reps) if T <= 8192 else float("nan")
    print(json.dumps({"shape": shape, "flash_ms": flash_ms, "math_ms": math_ms,
                      "flash_tflops": flops / flash_ms / 1e9, "math_tflops": flops / math_ms / 1e9,
                      "torch": torch.__version__}), flush=True)
    del q, k, v, do
    if dev.type == "cuda":
        torch.cuda.empty_cache()
