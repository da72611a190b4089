"""The training objectives of the Kronos tokenizer and predictor, as upstream Kronos defines them.

Tokenizer: the encoder's codes are L2-normalised and binarised by Binary Spherical Quantization with a
straight-through gradient; two decoders reconstruct the bars, one from the s1 bits alone and one from all
bits. Loss = (MSE(s1-only reconstruction) + MSE(full reconstruction) + BSQ loss) / 2, where the BSQ loss
is the commitment loss plus an entropy penalty (upstream's "analytical" per-sample entropy and
per-dimension codebook entropy, which is what its default settings compute).

Predictor: the frozen tokenizer turns bars into (s1, s2) tokens; the model reads tokens [:, :-1] and is
scored on [:, 1:], loss = (CE(s1) + CE(s2)) / 2. The s2 head is conditioned on an s1 token:
``s2_condition="target"`` (the default) conditions it on the true next s1, teacher forcing, which is what
the two-stage factorisation p(s1) p(s2 | s1) trains; ``"sampled"`` conditions it on an s1 drawn from the
model's own s1 distribution, as upstream's fine-tuning script does (its ``Kronos.forward`` without
``use_teacher_forcing``), which adds sampling noise to the s2 loss.

Dropout (the configs' ``*_dropout_p``) applies when the module is in training mode, as upstream's does.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from kronos_tasks.model.config import TokenizerConfig
from kronos_tasks.model.kronos import Kronos
from kronos_tasks.model.layers import causal_attend
from kronos_tasks.model.tokenizer import KronosTokenizer

ENTROPY_EPS = 1e-8  # inside the logarithms of the entropy terms, as upstream


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of distributions along the last dimension."""
    return -(probs * torch.log(probs + ENTROPY_EPS)).sum(dim=-1)


def bsq_quantize(z: torch.Tensor, config: TokenizerConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised codes z [B, L, C] -> (quantized codes [B, L, C] of +-1/sqrt(C) with a straight-through
    gradient, the BSQ loss: commitment + zeta x (gamma0 x per-sample entropy - gamma x codebook entropy))."""
    dims = z.shape[-1]
    scale = 1.0 / math.sqrt(dims)
    signs = torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z))
    quantized = (z + (signs - z).detach()) * scale  # forward: the signs; backward: the identity
    # Probability of each bit being -1 (analytical, from the distance to the two code values).
    p = torch.sigmoid(-4 * z * scale)
    probs = torch.stack([p, 1 - p], dim=-1)  # [B, L, C, 2]
    per_sample = _entropy(probs).sum(dim=-1).mean()
    codebook = _entropy(probs.reshape(-1, dims, 2).mean(dim=0)).sum()
    commit = config.beta * ((quantized.detach() - z) ** 2).sum(dim=-1).mean()
    return quantized, commit + config.zeta * (config.gamma0 * per_sample - config.gamma * codebook)


def tokenizer_reconstructions(
    tokenizer: KronosTokenizer, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised bars x [B, L, 6] -> (s1-only reconstruction, full reconstruction, BSQ loss)."""
    c = tokenizer.config
    batch, length, _ = x.shape
    positions = torch.arange(length, device=x.device).expand(batch, length)
    rope = tokenizer.rope(positions)
    attend = causal_attend(None, c.attn_dropout_p if tokenizer.training else 0.0)
    z = tokenizer.embed(x)
    for block in tokenizer.encoder:
        z = block(z, rope, attend)
    z = F.normalize(tokenizer.quant_embed(z), dim=-1)  # [B, L, s1_bits + s2_bits]
    quantized, bsq = bsq_quantize(z, c)
    reconstructed = []
    for hidden in (tokenizer.post_quant_embed_pre(quantized[..., : c.s1_bits]), tokenizer.post_quant_embed(quantized)):
        for block in tokenizer.decoder:
            hidden = block(hidden, rope, attend)
        reconstructed.append(tokenizer.head(hidden))
    return reconstructed[0], reconstructed[1], bsq


def tokenizer_loss(tokenizer: KronosTokenizer, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Upstream's tokenizer objective on normalised bars x [B, L, 6] -> (loss, parts).

    parts: ``recon`` (the two reconstruction MSEs summed), ``recon_s1`` and ``recon_full`` (each), ``bsq``.
    """
    s1_only, full, bsq = tokenizer_reconstructions(tokenizer, x)
    recon_s1, recon_full = F.mse_loss(s1_only, x), F.mse_loss(full, x)
    recon = recon_s1 + recon_full
    return (recon + bsq) / 2, {"recon": recon, "recon_s1": recon_s1, "recon_full": recon_full, "bsq": bsq}


def predictor_logits(
    model: Kronos,
    s1_ids: torch.Tensor,
    s2_ids: torch.Tensor,
    stamps: torch.Tensor,
    s1_condition: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token pairs [B, T] with their time features [B, T, 5] -> (s1 logits [B, T, 2**s1_bits], s2 logits
    [B, T, 2**s2_bits]), the s2 logits conditioned on ``s1_condition`` [B, T] (None: s1 ids sampled from
    the s1 logits, as upstream's ``Kronos.forward`` without teacher forcing)."""
    c = model.config
    batch, length = s1_ids.shape
    rope = model.rope(torch.arange(length, device=s1_ids.device).expand(batch, length))
    attend = causal_attend(None, c.attn_dropout_p if model.training else 0.0)
    x = model.token_drop(model.embed(s1_ids, s2_ids, stamps))
    context = model.context(x, rope, [attend] * len(model.transformer))  # [B, T, D]
    s1_logits = model.head(context)
    if s1_condition is None:
        probs = F.softmax(s1_logits.detach().float(), dim=-1).reshape(-1, s1_logits.shape[-1])
        s1_condition = torch.multinomial(probs, 1).reshape(batch, length)
    # Position t's s2 sees the contexts up to t only in training, as upstream's cross-attention does.
    hidden = model.dep_layer(context, model.embedding.emb_s1(s1_condition), causal=model.training)
    return s1_logits, model.head.cond_forward(hidden)


def predictor_loss(
    model: Kronos,
    tokenizer: KronosTokenizer,
    x: torch.Tensor,
    stamps: torch.Tensor,
    s2_condition: Literal["target", "sampled"] = "target",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Next-token objective on normalised bars x [B, L, 6] and time features stamps [B, L, 5] -> (loss, parts).

    The tokenizer is frozen (no gradients reach it). parts: ``s1`` and ``s2`` cross-entropies.
    """
    if s2_condition not in ("target", "sampled"):
        raise ValueError(f"s2_condition must be 'target' or 'sampled', got {s2_condition!r}.")
    with torch.no_grad():
        s1, s2 = tokenizer.encode(x)  # [B, L] each
    targets_s1, targets_s2 = s1[:, 1:], s2[:, 1:]
    s1_logits, s2_logits = predictor_logits(
        model, s1[:, :-1], s2[:, :-1], stamps[:, :-1], targets_s1 if s2_condition == "target" else None
    )
    ce_s1 = F.cross_entropy(s1_logits.reshape(-1, s1_logits.shape[-1]), targets_s1.reshape(-1))
    ce_s2 = F.cross_entropy(s2_logits.reshape(-1, s2_logits.shape[-1]), targets_s2.reshape(-1))
    return (ce_s1 + ce_s2) / 2, {"s1": ce_s1, "s2": ce_s2}
