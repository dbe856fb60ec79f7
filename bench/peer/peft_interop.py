"""PEFT interop check for the GPU bundle: an adapter trained by NativeLora, loaded by HF PEFT over the base model
(PeftModel.from_pretrained), gives the same logits as NativeLora's merged model loaded by transformers, in f32.
Also checks that the adapter moves the logits by far more than that difference, so a no-op adapter cannot pass.

Usage: python3 peft_interop.py BASE_DIR NAME=ADAPTER_DIR:MERGED_DIR [...] [--device cuda] [--tol 1e-4]
Prints one JSON line per adapter and exits 1 if any check fails.
"""
import argparse, json, sys
import torch
import peft
import transformers
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("base")
p.add_argument("pairs", nargs="+")
p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
p.add_argument("--tol", type=float, default=1e-4)
a = p.parse_args()
torch.backends.cuda.matmul.allow_tf32 = False  # exact f32 products on both sides
torch.backends.cudnn.allow_tf32 = False
dev = torch.device(a.device)


def load(path):
    try:
        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except TypeError:  # transformers before 4.56 names it torch_dtype
        m = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    return m.to(dev).eval()


def rel(x, y):
    return (torch.linalg.vector_norm((x - y).double()) / torch.linalg.vector_norm(y.double())).item()


failed = False
for pair in a.pairs:
    name, dirs = pair.split("=", 1)
    adapter, merged = dirs.split(":", 1)
    base = load(a.base)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, base.config.vocab_size, (2, 48), generator=g).to(dev)
    with torch.no_grad():
        base_logits = base(ids).logits
        peft_model = peft.PeftModel.from_pretrained(base, adapter).eval()
        peft_logits = peft_model(ids).logits
        merged_logits = load(merged)(ids).logits
    err, effect = rel(peft_logits, merged_logits), rel(peft_logits, base_logits)
    ok = err < a.tol and effect > 100 * a.tol and effect > 100 * err
    failed |= not ok
    cfg = json.load(open(f"{adapter}/adapter_config.json"))
    print(json.dumps({"adapter": name, "use_rslora": cfg.get("use_rslora"), "use_dora": cfg.get("use_dora"),
                      "rel_error_peft_vs_merged": err, "adapter_effect": effect, "ok": ok,
                      "peft": peft.__version__, "transformers": transformers.__version__}), flush=True)
sys.exit(1 if failed else 0)
