"""A plain reference of Kronos, written from the published math and independent of kronos_tasks.model.

It reads raw state dicts and recomputes everything for one series at a time with explicit
operations (no SDPA, no caches, no padding). Tests compare the library's paths against it.
The only library pieces it uses are the random stream and the token filter, which have their own tests.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kronos_tasks.inference.sampling import SamplingParams, sample_from_logits, stream_keys, uniforms


def rms_norm(x, weight, eps=1e-5):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def linear(x, sd, name, bias=True):
    y = x @ sd[f"{name}.weight"].T
    return y + sd[f"{name}.bias"] if bias else y


def rotate(x, positions):
    """Rotary positions, half-split layout: pairs (i, i + hd/2) rotate by angle pos * 10000^(-2i/hd)."""
    hd = x.shape[-1]
    # The published checkpoints hold these frequencies as float32 buffers, whatever the compute dtype.
    freq = (1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))).to(x.dtype)
    angle = positions.to(x.dtype)[:, None] * freq[None, :]  # [L, hd/2]
    a, b = x[..., : hd // 2], x[..., hd // 2 :]
    cos, sin = angle.cos(), angle.sin()
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def attention(xq, xkv, sd, name, n_heads, causal, rope_q, rope_k):
    """Multi-head attention for one sequence: xq [Lq, D], xkv [Lk, D]."""
    d = xq.shape[-1]
    hd = d // n_heads
    outs = []
    q_all, k_all, v_all = (
        linear(xq, sd, f"{name}.q_proj"),
        linear(xkv, sd, f"{name}.k_proj"),
        linear(xkv, sd, f"{name}.v_proj"),
    )
    for h in range(n_heads):
        q, k, v = (t[:, h * hd : (h + 1) * hd] for t in (q_all, k_all, v_all))
        if rope_q is not None:
            q = rotate(q, rope_q)
        if rope_k is not None:
            k = rotate(k, rope_k)
        scores = q @ k.T / math.sqrt(hd)
        if causal:
            lq, lk = scores.shape
            scores = scores.masked_fill(torch.ones(lq, lk, dtype=torch.bool).triu(1), float("-inf"))
        outs.append(torch.softmax(scores, -1) @ v)
    return linear(torch.cat(outs, -1), sd, f"{name}.out_proj")


def block(x, sd, name, n_heads):
    pos = torch.arange(x.shape[0])
    h = rms_norm(x, sd[f"{name}.norm1.weight"])
    x = x + attention(h, h, sd, f"{name}.self_attn", n_heads, True, pos, pos)
    h = rms_norm(x, sd[f"{name}.norm2.weight"])
    gate = torch.nn.functional.silu(linear(h, sd, f"{name}.ffn.w1", bias=False))
    return x + linear(gate * linear(h, sd, f"{name}.ffn.w3", bias=False), sd, f"{name}.ffn.w2", bias=False)


def tokenizer_encode(sd, cfg, bars):
    """bars [L, 6] -> (s1, s2) ids, bit i of each id = sign of dimension i of its half of the code."""
    z = linear(bars, sd, "embed")
    for i in range(cfg["n_enc_layers"] - 1):
        z = block(z, sd, f"encoder.{i}", cfg["n_heads"])
    z = linear(z, sd, "quant_embed")
    bits = (z > 0).long()
    s1 = sum(bits[:, i] << i for i in range(cfg["s1_bits"]))
    s2 = sum(bits[:, cfg["s1_bits"] + i] << i for i in range(cfg["s2_bits"]))
    return s1, s2


def tokenizer_decode(sd, cfg, s1, s2):
    n_bits = cfg["s1_bits"] + cfg["s2_bits"]
    bits = [((s1 >> i) & 1) for i in range(cfg["s1_bits"])] + [((s2 >> i) & 1) for i in range(cfg["s2_bits"])]
    code = (torch.stack(bits, -1).to(sd["embed.weight"].dtype) * 2 - 1) / math.sqrt(n_bits)
    z = linear(code, sd, "post_quant_embed")
    for i in range(cfg["n_dec_layers"] - 1):
        z = block(z, sd, f"decoder.{i}", cfg["n_heads"])
    return linear(z, sd, "head")


def model_contexts(sd, cfg, s1, s2, stamps):
    """Contexts [L, D] of a window of tokens with time features [L, 5] (minute, hour, weekday, day, month)."""
    d = cfg["d_model"]
    emb = torch.cat(
        [sd["embedding.emb_s1.weight"][s1] * math.sqrt(d), sd["embedding.emb_s2.weight"][s2] * math.sqrt(d)], -1
    )
    x = linear(emb, sd, "embedding.fusion_proj")
    stamps = stamps.long()
    names = ["minute", "hour", "weekday", "day", "month"]
    for j in (1, 2, 3, 4, 0):  # upstream's order of summation
        key = f"time_emb.{names[j]}_embed.weight"
        table = sd[key] if key in sd else sd[f"time_emb.{names[j]}_embed.emb.weight"]  # learn_te false
        x = x + table[stamps[:, j]]
    for i in range(cfg["n_layers"]):
        x = block(x, sd, f"transformer.{i}", cfg["n_heads"])
    return rms_norm(x, sd["norm.weight"])


def s1_logits(sd, contexts):
    return linear(contexts[-1], sd, "head.proj_s1")


def s2_logits(sd, contexts, s1_next):
    """The next token's s2 logits: its s1 embedding attends (no positions) to every context of the window."""
    query = sd["embedding.emb_s1.weight"][s1_next][None, :]
    attended = attention(query, contexts, sd, "dep_layer.cross_attn", 4, False, None, None)
    return linear(rms_norm(contexts[-1] + attended[0], sd["dep_layer.norm.weight"]), sd, "head.proj_s2")


def normalise(values, clip=5.0):
    x = values.astype(np.float32)
    mean, std = x.mean(0), x.std(0)
    return np.clip((x - mean) / (std + 1e-5), -clip, clip), mean, std


def forecast_paths(
    model, tokenizer, bars, stamps, future_stamps, pred_len, max_context, samples, params: SamplingParams, seed
):
    """Normalised sample paths [S, pred_len, 6] for one series, recomputing the whole window at every step."""
    msd, tsd = model.state_dict(), tokenizer.state_dict()
    mcfg, tcfg = model.config.to_dict(), tokenizer.config.to_dict()
    dtype = tokenizer.embed.weight.dtype
    bars = torch.as_tensor(bars, dtype=dtype)
    stamps, future_stamps = torch.as_tensor(stamps), torch.as_tensor(future_stamps)
    s1_hist, s2_hist = tokenizer_encode(tsd, tcfg, bars)
    keys = stream_keys(torch.full((samples,), seed, dtype=torch.int64), torch.arange(samples))
    all_stamps = torch.cat([stamps, future_stamps])
    paths = []
    for r in range(samples):
        s1_seq, s2_seq = list(s1_hist), list(s2_hist)
        for i in range(pred_len):
            end = len(s1_seq)
            start = max(0, end - max_context)
            ctx = model_contexts(
                msd, mcfg, torch.stack(s1_seq[start:end]), torch.stack(s2_seq[start:end]), all_stamps[start:end]
            )
            u1, u2 = uniforms(keys[r : r + 1], i + 1, ctx.dtype)[:, i].unbind(-1)
            s1 = sample_from_logits(s1_logits(msd, ctx)[None], params, u1)[0]
            s2 = sample_from_logits(s2_logits(msd, ctx, s1)[None], params, u2)[0]
            s1_seq.append(s1)
            s2_seq.append(s2)
        end = len(s1_seq)
        start = max(0, end - max_context)
        decoded = tokenizer_decode(tsd, tcfg, torch.stack(s1_seq[start:]), torch.stack(s2_seq[start:]))
        paths.append(decoded[-pred_len:])
    return torch.stack(paths).numpy()


# --- training objectives, from the published math (upstream's KronosTokenizer.forward + its loss, and
# Kronos.forward with teacher forcing + DualHead.compute_loss), one sequence at a time ---


def _binary_entropy(p):
    return -(p * torch.log(p + 1e-8) + (1 - p) * torch.log(1 - p + 1e-8))


def tokenizer_training_loss(sd, cfg, bars):
    """bars [B, L, 6] -> (loss, recon, bsq): (MSE(s1-only) + MSE(full) + BSQ) / 2, means over all of B x L."""
    n_bits = cfg["s1_bits"] + cfg["s2_bits"]
    codes, recon_s1, recon_full = [], [], []
    for x in bars:
        z = linear(x, sd, "embed")
        for i in range(cfg["n_enc_layers"] - 1):
            z = block(z, sd, f"encoder.{i}", cfg["n_heads"])
        z = linear(z, sd, "quant_embed")
        z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # onto the unit sphere
        code = torch.where(z > 0, 1.0, -1.0).to(z.dtype) / math.sqrt(n_bits)
        outs = []
        for part, name in ((code[:, : cfg["s1_bits"]], "post_quant_embed_pre"), (code, "post_quant_embed")):
            h = linear(part, sd, name)
            for i in range(cfg["n_dec_layers"] - 1):
                h = block(h, sd, f"decoder.{i}", cfg["n_heads"])
            outs.append(linear(h, sd, "head"))
        codes.append((z, code))
        recon_s1.append(outs[0])
        recon_full.append(outs[1])
    z = torch.stack([c[0] for c in codes])  # [B, L, C]
    code = torch.stack([c[1] for c in codes])
    mse_s1 = ((torch.stack(recon_s1) - bars) ** 2).mean()
    mse_full = ((torch.stack(recon_full) - bars) ** 2).mean()
    # Probability that a bit is -1 given the distance of z to the two code values; entropies in nats.
    p = torch.sigmoid(-4 * z / math.sqrt(n_bits))
    per_sample = _binary_entropy(p).sum(-1).mean()
    codebook = _binary_entropy(p.reshape(-1, n_bits).mean(0)).sum()
    commit = cfg["beta"] * ((code - z) ** 2).sum(-1).mean()
    bsq = commit + cfg["zeta"] * (cfg["gamma0"] * per_sample - cfg["gamma"] * codebook)
    return (mse_s1 + mse_full + bsq) / 2, mse_s1 + mse_full, bsq


def predictor_training_loss(sd, cfg, s1, s2, stamps, s1_condition):
    """Tokens [B, L], stamps [B, L, 5], s1_condition [B, L-1] -> (loss, ce_s1, ce_s2) of predicting
    tokens [:, 1:] from tokens [:, :-1]; position t's s2 is conditioned on s1_condition[t] and sees the
    contexts up to t (causal cross-attention, upstream's training mode)."""
    logp1, logp2 = [], []
    for b in range(s1.shape[0]):
        ctx = model_contexts(sd, cfg, s1[b, :-1], s2[b, :-1], stamps[b, :-1])  # [T, D]
        logits1 = linear(ctx, sd, "head.proj_s1")
        pos = torch.arange(ctx.shape[0])
        query = sd["embedding.emb_s1.weight"][s1_condition[b]]
        attended = attention(query, ctx, sd, "dep_layer.cross_attn", 4, True, pos, pos)
        logits2 = linear(rms_norm(ctx + attended, sd["dep_layer.norm.weight"]), sd, "head.proj_s2")
        logp1.append(torch.log_softmax(logits1, -1).gather(-1, s1[b, 1:, None])[:, 0])
        logp2.append(torch.log_softmax(logits2, -1).gather(-1, s2[b, 1:, None])[:, 0])
    ce_s1, ce_s2 = -torch.cat(logp1).mean(), -torch.cat(logp2).mean()
    return (ce_s1 + ce_s2) / 2, ce_s1, ce_s2


# --- primitives written from their definitions, one value at a time (tests/test_primitives.py) ----------------


def lowbias32(x: int) -> int:
    """C. Wellons' lowbias32 hash on Python integers."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def stream_key(seed: int, sample: int) -> int:
    """The 32-bit key of sample ``sample`` of a series seeded ``seed`` (0 <= seed < 2**63)."""
    key = lowbias32(seed ^ 0x9E3779B9)
    key = lowbias32(key ^ (seed >> 32))
    return lowbias32(key ^ sample)


def uniform(key: int, step: int, stage: int) -> float:
    """The draw of (key, step, stage): the top 24 bits of a twice-hashed counter, centred in its 2**-24 cell."""
    bits = lowbias32((lowbias32(key ^ (2 * step + stage)) + 0x632BE5AB) & 0xFFFFFFFF) >> 8
    return (bits + 0.5) / 2**24


def nucleus(probabilities: list[float], top_k: int, top_p: float) -> list[int]:
    """Indices kept by top-k (every token tied with the k-th largest stays) then top-p (tokens in order of
    probability, ties by index, while the mass before them is at most top_p; the first always stays)."""
    kept = list(range(len(probabilities)))
    if 0 < top_k < len(probabilities):
        kth = sorted(probabilities, reverse=True)[top_k - 1]
        kept = [i for i in kept if probabilities[i] >= kth]
    if top_p < 1.0:
        total = sum(probabilities[i] for i in kept)
        order = sorted(kept, key=lambda i: (-probabilities[i], i))
        chosen, before = [], 0.0
        for i in order:
            if chosen and before > top_p:
                break
            chosen.append(i)
            before += probabilities[i] / total
        kept = sorted(chosen)
    return kept


def inverse_cdf(probabilities: list[float], u: float) -> int:
    """The first token whose running mass reaches u times the total mass."""
    total = sum(probabilities)
    running = 0.0
    for index, p in enumerate(probabilities):
        running += p
        if running >= u * total:
            return index
    return len(probabilities) - 1


def zscores(column: list[float], clip: float) -> list[float]:
    """One feature's z-scores as inference computes them: population mean and standard deviation, 1e-5
    added to the deviation, clipped to [-clip, clip]."""
    n = len(column)
    mean = sum(column) / n
    sd = (sum((v - mean) ** 2 for v in column) / n) ** 0.5
    return [max(-clip, min(clip, (v - mean) / (sd + 1e-5))) for v in column]


def calendar_features(stamp) -> list[int]:
    """minute, hour, weekday (Monday 0), day of month, month of a wall-clock time."""
    return [stamp.minute, stamp.hour, stamp.weekday(), stamp.day, stamp.month]


def sinusoid_table(size: int, d_model: int) -> torch.Tensor:
    """The fixed time-embedding table: row p, column 2i = sin(p / 10000^(2i/d)), column 2i+1 = cos(same)."""
    table = torch.zeros(size, d_model, dtype=torch.float64)
    for p in range(size):
        for i in range(0, d_model, 2):
            angle = p / 10000 ** (i / d_model)
            table[p, i] = math.sin(angle)
            table[p, i + 1] = math.cos(angle)
    return table


def isotonic_values(x, y) -> tuple[list[float], list[float]]:
    """The least-squares non-decreasing fit of y on x at each distinct x, by the max-min formula (Barlow et al.,
    1972): the fit at the i-th distinct x is the max over j <= i of the min over k >= i of the mean of the y
    observed at the distinct x from the j-th to the k-th. -> (distinct x ascending, fitted values)."""
    xs = sorted(set(float(v) for v in x))
    sums = [sum(float(b) for a, b in zip(x, y) if float(a) == u) for u in xs]
    counts = [sum(1 for a in x if float(a) == u) for u in xs]
    n = len(xs)
    fitted = [
        max(min(sum(sums[j : k + 1]) / sum(counts[j : k + 1]) for k in range(i, n)) for j in range(i + 1))
        for i in range(n)
    ]
    return xs, fitted
