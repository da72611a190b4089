"""Layers shared by the Kronos tokenizer and predictor.

Module and parameter names follow upstream Kronos so that published state dicts load unchanged.
Attention takes its core as an argument (``attend``): the same block runs a plain causal pass over a
whole window or one step against a key/value cache (see ``kronos_tasks.inference.cache``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# attend(q, k, v) -> attention output; q, k, v: [B, H, L, head_dim] with rotary positions applied.
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each [B, L, 1, head_dim]


def _onednn_packing_works() -> bool:
    try:
        weight, x = torch.randn(8, 4), torch.randn(3, 4)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 64)
        got = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return torch.allclose(got, x @ weight.T, rtol=1e-5, atol=1e-6)
    except (AttributeError, RuntimeError):
        return False


# Float32 products on the CPU go through oneDNN with a prepacked weight when this build has it: for the
# few rows of a decoding step it is up to twice as fast as the default BLAS, and never much slower, on the
# CPUs we measured (bench/RESULTS.md). Results differ from the BLAS ones by float32 rounding only (~1e-6 relative).
ONEDNN_PACKED_LINEAR = torch.backends.mkldnn.is_available() and _onednn_packing_works()


class JoinedLinear:
    """Several linear layers of one input computed as one product, ``x @ [W1; W2; ...].T + [b1; b2; ...]``.

    The joined weight (prepacked for float32 on the CPU) is derived from the layers' own parameters and
    rebuilt whenever one of them changes (loading weights, ``.to()``, in-place edits); the layers' state
    dict is untouched.
    """

    def __init__(self, *linears: nn.Linear):
        self.linears = linears
        self._key: tuple | None = None

    def _sources(self) -> list[torch.Tensor]:
        return [t for lin in self.linears for t in (lin.weight, lin.bias) if t is not None]

    def _build(self) -> None:
        def join(tensors: list[torch.Tensor]) -> torch.Tensor:
            return tensors[0].detach() if len(tensors) == 1 else torch.cat([t.detach() for t in tensors])

        weight = join([lin.weight for lin in self.linears])
        self.bias = None if self.linears[0].bias is None else join([lin.bias for lin in self.linears])
        self.packed = ONEDNN_PACKED_LINEAR and weight.device.type == "cpu" and weight.dtype == torch.float32
        # The row-count hint picks oneDNN's layout; 1 picks a vector layout that is slow for 8+ rows,
        # while any hint from 8 to 1024 serves decoding steps and long prefills alike.
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, 64) if self.packed else weight

    def _state(self) -> tuple:
        # Inference tensors (parameters made under torch.inference_mode) cannot change in place.
        return tuple((t.data_ptr(), t.dtype, 0 if t.is_inference() else t._version) for t in self._sources())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and any(t.requires_grad for t in self._sources()):
            # Training: the product of the parameters themselves, so that gradients reach them.
            weights = [lin.weight for lin in self.linears]
            biases = [lin.bias for lin in self.linears if lin.bias is not None]
            weight = weights[0] if len(weights) == 1 else torch.cat(weights)
            bias = (biases[0] if len(biases) == 1 else torch.cat(biases)) if biases else None
            return F.linear(x, weight, bias)
        key = self._state()
        if key != self._key:
            self._build()
            self._key = key
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) that computes through ``JoinedLinear``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.joined = JoinedLinear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.joined(x)


class Embedding(nn.Embedding):
    """``nn.Embedding`` (same parameter and state dict) whose skeleton on the meta device skips the random
    initialisation: normal_ on meta imports torch._dynamo, 2 s of the first checkpoint load of a process."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Half precision is normalised in float32 (as upstream does); float64 stays float64.
        if x.dtype in (torch.float16, torch.bfloat16):
            return F.rms_norm(x.float(), self.weight.shape, eps=self.eps).type_as(x) * self.weight
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, d_model: int, ff_dim: int):
        super().__init__()
        self.w1 = Linear(d_model, ff_dim, bias=False)
        self.w3 = Linear(d_model, ff_dim, bias=False)
        self.w2 = Linear(ff_dim, d_model, bias=False)
        self.w13 = JoinedLinear(self.w1, self.w3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class RotaryEmbedding(nn.Module):
    """Rotary positions in the half-split layout (the second half of each head rotates against the first)."""

    def __init__(self, head_dim: int):
        super().__init__()
        # Computed on the CPU, then moved to the device the module is built on: on the meta device (the
        # loader's config check) the power would load torch's meta kernels, 1.5 s of every process's first load.
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device="cpu").float() / head_dim))
        # Derived from head_dim, so not stored; upstream's files carry it and the loader checks it.
        self.register_buffer("inv_freq", inv_freq.to(torch.get_default_device()), persistent=False)

    def forward(self, positions: torch.Tensor) -> Rope:
        """cos and sin for integer ``positions`` [B, L], each [B, L, 1, head_dim] (broadcast over heads)."""
        freqs = positions.to(self.inv_freq.dtype).unsqueeze(-1) * self.inv_freq  # [B, L, head_dim/2]
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(2)  # [B, L, 1, head_dim]
        return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate ``x`` [..., head_dim] by ``rope``'s angles, broadcast against x."""
    cos, sin = rope
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def positions_from_mask(valid: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """Rotary positions [B, L]: 0, 1, ... counted over the valid (unpadded) positions of each row."""
    if valid is None:
        return torch.arange(length, device=device).expand(batch, length)
    return (valid.long().cumsum(-1) - 1).clamp_(min=0)


def causal_attend(valid: torch.Tensor | None, dropout_p: float = 0.0) -> Attend:
    """Causal self-attention over a window, ignoring the keys of padded positions (``valid`` [B, L], True = real).

    ``dropout_p`` drops attention weights (training only; the caller passes 0 otherwise).
    """
    if valid is None:
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    length = valid.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    mask = causal & valid[:, None, None, :]
    # A padded query sees no real key; letting it see itself keeps its (unused) output finite.
    mask |= torch.eye(length, dtype=torch.bool, device=valid.device)
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = Linear(d_model, d_model)
        self.k_proj = Linear(d_model, d_model)
        self.v_proj = Linear(d_model, d_model)
        self.out_proj = Linear(d_model, d_model)
        self.qkv = JoinedLinear(self.q_proj, self.k_proj, self.v_proj)
        self.kv = JoinedLinear(self.k_proj, self.v_proj)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, D] -> [B, H, L, hd] (a view)."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        batch, _, length, _ = y.shape
        y = y.transpose(1, 2).contiguous().view(batch, length, self.n_heads * self.head_dim)  # [B, L, D]
        return self.out_proj(y)

    def forward(self, x: torch.Tensor, rope: Rope, attend: Attend) -> torch.Tensor:
        batch, length, _ = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.n_heads, self.head_dim)
        cos, sin = rope
        # Rotated in the projection's own layout, where the elementwise kernels run on contiguous rows.
        qk = apply_rope(qkv[:, :, :2], (cos.unsqueeze(2), sin.unsqueeze(2)))  # [B, L, 2, H, hd]
        q, k, v = qk[:, :, 0], qk[:, :, 1], qkv[:, :, 2]
        return self.merge(attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)))


def dropout(p: float) -> nn.Module:
    """Dropout with probability ``p`` in training mode; no module at all to call when ``p`` is 0."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm1 x), then + ffn(norm2 x).

    ``resid_dropout_p`` and ``ffn_dropout_p`` drop the attention and feed-forward outputs in training
    mode, where upstream does; they hold no weights, so state dicts are unchanged.
    """

    def __init__(
        self, d_model: int, n_heads: int, ff_dim: int, ffn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0
    ):
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.self_attn = Attention(d_model, n_heads)
        self.norm2 = RMSNorm(d_model)
        self.ffn = FeedForward(d_model, ff_dim)
        self.resid_dropout = dropout(resid_dropout_p)
        self.ffn_dropout = dropout(ffn_dropout_p)

    def forward(self, x: torch.Tensor, rope: Rope, attend: Attend) -> torch.Tensor:
        x = x + self.resid_dropout(self.self_attn(self.norm1(x), rope, attend))
        return x + self.ffn_dropout(self.ffn(self.norm2(x)))
