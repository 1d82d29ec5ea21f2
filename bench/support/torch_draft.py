#!/usr/bin/env python3
"""The draft step of docs/model-math.md in PyTorch (float32, autograd), written plainly.

  torch_draft.py check IN.safetensors OUT.safetensors
      IN: the weights by their design names, ids/aux/last/mask [B, T, ...], config JSON in
      the metadata key "config". OUT: loss [1], ploss [K], acc [K], grad.<name> per
      trainable tensor.
  torch_draft.py bench CONFIG_JSON --batch B --seq T --reps N [--warmup 1] [--threads N]
                       [--device cpu|cuda] [--autocast bf16]
      random weights at the config's sizes (every target argmax in d2t, mask 1); times
      forward + backward (on a GPU: synchronised, eager, optionally under bf16 autocast with
      fp32 weights); prints {"tokensPerSec", "msPerStep", "flopsPerStep", ...} as JSON.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

TRAINABLE = ['fc', 'n_in', 'n_hid', 'q', 'k', 'v', 'o', 'n_post', 'gate', 'up', 'down', 'n_final', 'lm']
DECAY = 0.8


def shapes(c):
    H, nh, nkv, I = c['hidden'], c['heads'], c['kvHeads'], c['intermediate']
    d = H // nh
    return {'fc': [H, 3 * H], 'n_in': [H], 'n_hid': [H], 'q': [nh * d, 2 * H], 'k': [nkv * d, 2 * H],
            'v': [nkv * d, 2 * H], 'o': [H, nh * d], 'n_post': [H], 'gate': [I, H], 'up': [I, H],
            'down': [H, I], 'n_final': [H], 'lm': [c['draftVocab'], H]}


def rmsnorm(x, w, eps):
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def rope_tables(T, d, theta):
    i = torch.arange(d // 2, dtype=torch.float64)
    a = torch.arange(T, dtype=torch.float64)[:, None] * theta ** (-2.0 * i / d)
    return a.cos().float(), a.sin().float()  # [T, d/2]


def rope(x, cos, sin):
    """x [B, heads, T, d], rotate-half with position t."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def shift(x, s, fill=0):
    """out[:, t] = x[:, t + s] where t + s < T, else fill."""
    out = torch.full_like(x, fill)
    if s < x.shape[1]:
        out[:, :x.shape[1] - s] = x[:, s:]
    return out


def draft_loss(c, W, ids, aux, last, mask):
    """loss (autograd), ploss [K], acc [K]; W holds trainable and frozen tensors."""
    B, T = ids.shape
    H, nh, nkv, K, eps = c['hidden'], c['heads'], c['kvHeads'], c['ttt'], c['rmsEps']
    d, g = H // nh, nh // nkv
    d2t = W['d2t'].long()
    with torch.no_grad():  # target distribution restricted to d2t
        z = last @ W['target_head'].T  # [B, T, V]
        y = z.argmax(-1)  # first index on ties
        p = torch.softmax(z[..., d2t], dim=-1)  # [B, T, Vd]
        inv = torch.full((c['vocab'],), -1, dtype=torch.long)
        inv[d2t] = torch.arange(d2t.numel())
        tgt = inv[y]
        ok = (tgt >= 0).float()
        del z
    cos, sin = rope_tables(T, d, c['ropeTheta'])
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    hin = aux @ W['fc'].T
    keys, vals, plosses, accs = [], [], [], []
    loss = torch.zeros(())
    for k in range(K):
        tok = shift(ids, 1 + k)
        w = shift(mask.float() * ok, 1 + k)
        pk, tk = shift(p, 1 + k), shift(tgt, 1 + k, -1)
        x = torch.cat([rmsnorm(W['embed'][tok.long()], W['n_in'], eps), rmsnorm(hin, W['n_hid'], eps)], dim=-1)
        q = rope((x @ W['q'].T).view(B, T, nh, d).transpose(1, 2), cos, sin)
        kk = rope((x @ W['k'].T).view(B, T, nkv, d).transpose(1, 2), cos, sin).repeat_interleave(g, dim=1)
        vv = (x @ W['v'].T).view(B, T, nkv, d).transpose(1, 2).repeat_interleave(g, dim=1)
        keys.append(kk)
        vals.append(vv)
        # key set: step-0 keys at s <= t, then step-j keys at position t for 1 <= j <= k
        s0 = (q @ keys[0].transpose(-1, -2)).masked_fill(~causal, float('-inf'))
        extra = [(q * keys[j]).sum(-1, keepdim=True) for j in range(1, k + 1)]
        a = torch.softmax(torch.cat([s0] + extra, dim=-1) / math.sqrt(d), dim=-1)
        out = a[..., :T] @ vals[0]
        for j in range(1, k + 1):
            out = out + a[..., T + j - 1:T + j] * vals[j]
        h1 = hin + out.transpose(1, 2).reshape(B, T, nh * d) @ W['o'].T
        uu = rmsnorm(h1, W['n_post'], eps)
        h2 = h1 + (F.silu(uu @ W['gate'].T) * (uu @ W['up'].T)) @ W['down'].T
        logits = rmsnorm(h2, W['n_final'], eps) @ W['lm'].T
        pl = -(w * (pk * torch.log_softmax(logits, dim=-1)).sum(-1)).sum() / (B * T)
        loss = loss + DECAY ** k * pl
        plosses.append(pl.detach())
        with torch.no_grad():
            ws = w.sum()
            hits = (w * (logits.argmax(-1) == tk).float()).sum()
            accs.append(hits / ws if ws > 0 else torch.zeros(()))
        hin = h2
    return loss, torch.stack(plosses), torch.stack(accs)


def check(inp, out):
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(inp, 'pt') as f:
        c = json.loads(f.metadata()['config'])
        t = {n: f.get_tensor(n) for n in f.keys()}
    W = {n: t[n].float() for n in TRAINABLE + ['embed', 'target_head']}
    W['d2t'] = t['d2t']
    for n in TRAINABLE:
        W[n].requires_grad_(True)
    loss, ploss, acc = draft_loss(c, W, t['ids'], t['aux'].float(), t['last'].float(), t['mask'])
    loss.backward()
    res = {'loss': loss.detach().reshape(1), 'ploss': ploss, 'acc': acc.float()}
    for n in TRAINABLE:
        res['grad.' + n] = W[n].grad.contiguous()
    save_file(res, out)


def step_flops(c, B, T):
    """Matrix FLOPs of one training step (forward + backward), 2·m·n·k per product: the
    trainable GEMMs 3x (forward, input and weight gradients; fc once, at step 0), the frozen
    target head forward once, causal attention (QK and PV) 3.5x over K TTT steps."""
    H, nh, nkv, I, Vd, V, K = c['hidden'], c['heads'], c['kvHeads'], c['intermediate'], c['draftVocab'], c['vocab'], c['ttt']
    d = H // nh
    N = B * T
    layer = 2 * N * (2 * H * (nh + 2 * nkv) * d + nh * d * H + 3 * H * I + H * Vd)
    attn = 2 * 2 * B * nh * d * (T * T / 2 + T * K / 2)
    return 3 * 2 * N * 3 * H * H + K * (3 * layer + 3.5 * attn) + 2 * N * H * V


def bench(c, B, T, reps, warmup, threads, device='cpu', autocast=None):
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(1)
    H = c['hidden']
    W = {}
    for n, s in shapes(c).items():
        W[n] = torch.ones(s) if n.startswith('n_') else torch.randn(s, generator=gen) * 0.02
        W[n].requires_grad_(True)
    W['embed'] = torch.randn(c['vocab'], H, generator=gen)
    W['target_head'] = torch.randn(c['vocab'], H, generator=gen) / math.sqrt(H)
    W['d2t'] = torch.arange(c['draftVocab'], dtype=torch.int32)
    ids = torch.randint(0, c['vocab'], (B, T), generator=gen, dtype=torch.int32)
    aux = torch.randn(B, T, 3 * H, generator=gen)
    # last = 3·Wt[y] + noise with y in d2t: every row's target argmax is in d2t (as in real training)
    y = torch.randint(0, c['draftVocab'], (B, T), generator=gen)
    last = 3 * W['target_head'][y] + 0.3 * torch.randn(B, T, H, generator=gen)
    mask = torch.ones(B, T, dtype=torch.uint8)
    if device != 'cpu':
        W = {n: (t.detach().to(device).requires_grad_(True) if n in TRAINABLE else t.to(device)) for n, t in W.items()}
        ids, aux, last, mask = ids.to(device), aux.to(device), last.to(device), mask.to(device)
    sync = torch.cuda.synchronize if device.startswith('cuda') else (lambda: None)
    times, loss = [], None
    for r in range(warmup + reps):
        for n in TRAINABLE:
            W[n].grad = None
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device_type=device.split(':')[0], dtype=torch.bfloat16, enabled=autocast == 'bf16'):
            loss, _, _ = draft_loss(c, W, ids, aux, last, mask)
        loss.backward()
        sync()
        if r >= warmup:
            times.append(time.perf_counter() - t0)
    best = min(times)
    flops = step_flops(c, B, T)
    print(json.dumps({'tokensPerSec': B * T / best, 'msPerStep': best * 1000, 'meanMs': 1000 * sum(times) / len(times),
                      'flopsPerStep': flops, 'tflops': flops / best / 1e12, 'loss': loss.item(), 'threads': torch.get_num_threads(),
                      'device': device, 'autocast': autocast, 'torch': torch.__version__}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('mode', choices=['check', 'bench'])
    ap.add_argument('args', nargs='+')
    ap.add_argument('--batch', type=int, default=1)
    ap.add_argument('--seq', type=int, default=256)
    ap.add_argument('--reps', type=int, default=2)
    ap.add_argument('--warmup', type=int, default=1)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--autocast', choices=['bf16'], default=None)
    a = ap.parse_args()
    if a.mode == 'check':
        torch.set_num_threads(1)
        check(*a.args)
    else:
        bench(json.loads(a.args[0]), a.batch, a.seq, a.reps, a.warmup, a.threads, a.device, a.autocast)


if __name__ == '__main__':
    sys.exit(main())
