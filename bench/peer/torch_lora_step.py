"""CPU peer for `nativelora-bench train`: the same Llama shape, LoRA targets, optimizer, sequence
length and micro-batch, one optimizer step at a time, in PyTorch (Debian's python3-torch 1.13 under
/usr/bin/python3). Prints one JSON line: {"tokens_per_s": [...per repetition...], "ms_per_step": [...]}.

Usage: /usr/bin/python3 torch_lora_step.py CONFIG_JSON --seq 128 --micro-batch 4 --steps 10 --warmup 3 --reps 3 --r 16 --targets q_proj,v_proj
Run with OMP_WAIT_POLICY=PASSIVE: default OpenMP spinning makes step times erratic on 2 cores.
"""
import argparse, json, math, time
import torch
import torch.nn as nn
import torch.nn.functional as F

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
p.add_argument("--threads", type=int, default=0)
a = p.parse_args()
if a.threads > 0:
    torch.set_num_threads(a.threads)
cfg = json.load(open(a.config))
torch.manual_seed(0)
D, I, H = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
KV = cfg.get("num_key_value_heads", H)
hd = D // H
V, L, eps = cfg["vocab_size"], cfg["num_hidden_layers"], cfg.get("rms_norm_eps", 1e-5)
targets = set(a.targets.split(","))


class LoraLinear(nn.Module):
    def __init__(self, i, o, lora):
        super().__init__()
        self.base = nn.Linear(i, o, bias=False)
        self.base.weight.requires_grad_(False)
        self.lora = lora
        if lora:
            self.A = nn.Parameter(torch.empty(a.r, i))
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
            self.B = nn.Parameter(torch.zeros(o, a.r))
            self.s = a.alpha / a.r

    def forward(self, x):
        y = self.base(x)
        return y + (x @ self.A.t() @ self.B.t()) * self.s if self.lora else y


def rms(x, w):
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


inv = 1.0 / (cfg.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2).float() / hd))
ang = torch.arange(a.seq).float()[:, None] * inv[None, :]
cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)


def rope(x):  # [B, heads, T, hd]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1 = nn.Parameter(torch.ones(D), requires_grad=False)
        self.n2 = nn.Parameter(torch.ones(D), requires_grad=False)
        self.q = LoraLinear(D, H * hd, "q_proj" in targets)
        self.k = LoraLinear(D, KV * hd, "k_proj" in targets)
        self.v = LoraLinear(D, KV * hd, "v_proj" in targets)
        self.o = LoraLinear(H * hd, D, "o_proj" in targets)
        self.g = LoraLinear(D, I, "gate_proj" in targets)
        self.u = LoraLinear(D, I, "up_proj" in targets)
        self.d = LoraLinear(I, D, "down_proj" in targets)

    def forward(self, h, mask):
        B, T, _ = h.shape
        x = rms(h, self.n1)
        q = rope(self.q(x).view(B, T, H, hd).transpose(1, 2))
        k = rope(self.k(x).view(B, T, KV, hd).transpose(1, 2)).repeat_interleave(H // KV, 1)
        v = self.v(x).view(B, T, KV, hd).transpose(1, 2).repeat_interleave(H // KV, 1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd) + mask
        o = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * hd)
        h = h + self.o(o)
        x = rms(h, self.n2)
        return h + self.d(F.silu(self.g(x)) * self.u(x))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.emb.weight.requires_grad_(False)
        self.layers = nn.ModuleList([Layer() for _ in range(L)])
        self.norm = nn.Parameter(torch.ones(D), requires_grad=False)
        self.head = nn.Linear(D, V, bias=False)
        self.head.weight.requires_grad_(False)

    def forward(self, ids, labels):
        h = self.emb(ids)
        mask = torch.full((a.seq, a.seq), float("-inf")).triu(1)
        for layer in self.layers:
            h = layer(h, mask)
        logits = self.head(rms(h, self.norm))
        return F.cross_entropy(logits.view(-1, V), labels.view(-1))


model = Model()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
ids = torch.randint(0, V, (a.micro_batch, a.seq))
labels = torch.roll(ids, -1, 1)


def step():
    opt.zero_grad(set_to_none=True)
    loss = model(ids, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()


for _ in range(a.warmup):
    step()
tps, ms = [], []
for _ in range(a.reps):
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    dt = (time.perf_counter() - t0) / a.steps
    ms.append(dt * 1000)
    tps.append(a.micro_batch * a.seq / dt)
print(json.dumps({"tokens_per_s": tps, "ms_per_step": ms, "torch": torch.__version__, "threads": torch.get_num_threads()}))
