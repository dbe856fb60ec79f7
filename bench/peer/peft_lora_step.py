"""GPU peer for `nativelora-bench train --peer peft`: the same Llama config (random weights), LoRA rank, alpha and
targets, AdamW, gradient clipping, sequence length and micro-batch as NativeLora's step, in Hugging Face
transformers + PEFT as a user would run it (LlamaForCausalLM with its default attention, get_peft_model, no
gradient checkpointing, no dropout). Prints one JSON line: {"tokens_per_s": [...per repetition...], "ms_per_step":
[...], versions, device}. Modelled on torch_lora_step.py, which writes the same step by hand for the CPU.

Usage: python3 peft_lora_step.py CONFIG_JSON --seq 512 --micro-batch 4 --steps 5 --warmup 2 --reps 3 --r 16 --alpha 32
       --targets q_proj,v_proj --dtype bf16 --device cuda
"""
import argparse, json, time
import torch
import transformers
import peft
from transformers import AutoConfig, AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("config")
p.add_argument("--seq", type=int, default=128)
p.add_argument("--micro-batch", type=int, default=4)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--reps", type=int, default=3)
p.add_argument("--r", type=int, default=16)
p.add_argument("--alpha", type=float, default=32)
p.add_argument("--targets", default="q_proj,v_proj")
p.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
p.add_argument("--device", default="cuda")
a = p.parse_args()

dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[a.dtype]
dev = torch.device(a.device)
if dev.type == "cuda" and not torch.cuda.is_available():
    raise SystemExit("peft_lora_step.py: --device cuda but torch sees no CUDA device")
torch.manual_seed(0)
cfg = AutoConfig.for_model(**json.load(open(a.config)))
cfg.use_cache = False
with dev:  # initialise on the device: a 1B model initialised on the CPU takes longer than the benchmark
    try:
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    except TypeError:  # transformers before 4.56 names it torch_dtype
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype)
model.train()
lora = peft.LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=0.0, target_modules=a.targets.split(","), bias="none", task_type="CAUSAL_LM")
model = peft.get_peft_model(model, lora)
trainable = [q for q in model.parameters() if q.requires_grad]
opt = torch.optim.AdamW(trainable, lr=2e-4)
ids = torch.randint(0, cfg.vocab_size, (a.micro_batch, a.seq), device=dev)


def step():
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss  # transformers shifts the labels: next-token loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


for _ in range(a.warmup):
    step()
sync()
tps, ms = [], []
for _ in range(a.reps):
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / a.steps
    ms.append(dt * 1000)
    tps.append(a.micro_batch * a.seq / dt)
print(json.dumps({"tokens_per_s": tps, "ms_per_step": ms, "torch": torch.__version__, "transformers": transformers.__version__,
                  "peft": peft.__version__, "dtype": a.dtype, "attention": getattr(model.config, "_attn_implementation", "?"),
                  "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                  "trainable": sum(q.numel() for q in trainable)}))
