"""The network: published config keys, checkpoint round trips and errors, equivalence with the plain reference."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import reference
from kronos_tasks.model import CheckpointError, ConfigError, Kronos, KronosTokenizer, check_pair
from kronos_tasks.model.presets import MODEL_PRESETS, TOKENIZER_PRESETS, parameter_count, random_model, random_tokenizer

PUBLISHED_MODEL_KEYS = {
    "attn_dropout_p",
    "d_model",
    "ff_dim",
    "ffn_dropout_p",
    "learn_te",
    "n_heads",
    "n_layers",
    "resid_dropout_p",
    "s1_bits",
    "s2_bits",
    "token_dropout_p",
}
PUBLISHED_TOKENIZER_KEYS = {
    "attn_dropout_p",
    "beta",
    "d_in",
    "d_model",
    "ff_dim",
    "ffn_dropout_p",
    "gamma",
    "gamma0",
    "group_size",
    "n_dec_layers",
    "n_enc_layers",
    "n_heads",
    "resid_dropout_p",
    "s1_bits",
    "s2_bits",
    "zeta",
}


def test_constructors_take_exactly_the_published_config_keys():
    assert set(MODEL_PRESETS["Kronos-small"]) == PUBLISHED_MODEL_KEYS
    assert set(TOKENIZER_PRESETS["Kronos-Tokenizer-base"]) == PUBLISHED_TOKENIZER_KEYS
    Kronos(**MODEL_PRESETS["tiny"])
    KronosTokenizer(**TOKENIZER_PRESETS["tiny"])
    with pytest.raises(ConfigError, match="unknown key.*'max_len'"):
        Kronos(**MODEL_PRESETS["tiny"], max_len=512)
    config = dict(MODEL_PRESETS["tiny"])
    del config["learn_te"]
    with pytest.raises(ConfigError, match="missing key.*learn_te"):
        Kronos(**config)
    with pytest.raises(ConfigError, match="n_layers.*int"):
        Kronos(**{**MODEL_PRESETS["tiny"], "n_layers": "2"})
    with pytest.raises(ConfigError, match="divisible"):
        KronosTokenizer(**{**TOKENIZER_PRESETS["tiny"], "n_heads": 5})


def test_published_shapes_have_the_published_parameter_counts():
    assert parameter_count(random_model("Kronos-small")) == 24_741_376
    assert parameter_count(random_tokenizer("Kronos-Tokenizer-base")) == 3_958_042


def test_state_dict_names_follow_upstream():
    keys = set(random_model("tiny").state_dict())
    for key in (
        "embedding.emb_s1.weight",
        "embedding.fusion_proj.bias",
        "time_emb.minute_embed.weight",
        "transformer.1.self_attn.q_proj.weight",
        "transformer.0.ffn.w3.weight",
        "transformer.0.norm2.weight",
        "norm.weight",
        "dep_layer.cross_attn.out_proj.bias",
        "dep_layer.norm.weight",
        "head.proj_s2.weight",
    ):
        assert key in keys
    tokenizer_keys = set(random_tokenizer("tiny").state_dict())
    assert {
        "embed.weight",
        "quant_embed.bias",
        "post_quant_embed_pre.weight",
        "decoder.1.ffn.w2.weight",
    } <= tokenizer_keys


def test_kronos_small_shape_round_trip_gives_identical_logits(tmp_path):
    model = random_model("Kronos-small", seed=3)
    folder = model.save_pretrained(tmp_path / "small")
    assert json.loads((folder / "config.json").read_text()) == MODEL_PRESETS["Kronos-small"]
    reloaded = Kronos.from_pretrained(folder)
    s1, s2 = torch.randint(0, 1024, (2, 48)), torch.randint(0, 1024, (2, 48))
    stamps = torch.stack([torch.randint(0, n, (2, 48)) for n in (60, 24, 7, 32, 13)], -1).float()
    with torch.no_grad():
        logits_a, ctx_a = model.decode_s1(s1, s2, stamps)
        logits_b, ctx_b = reloaded.decode_s1(s1, s2, stamps)
        assert torch.equal(logits_a, logits_b)
        next_s1 = torch.randint(0, 1024, (2, 1))
        assert torch.equal(model.decode_s2(ctx_a, next_s1), reloaded.decode_s2(ctx_b, next_s1))


def test_loading_a_pair_checks_its_shapes_without_torch_compile_machinery(tmp_path):
    """The loader's config check builds the modules on the meta device; the random init of embeddings and
    the rotary and sinusoid tables computed there would import torch._dynamo and torch's meta kernels (about
    2 s of every forecast task's first load). A fresh process loads a pair (and a model with fixed time
    embeddings) and says which of those it imported."""
    tokenizer = random_tokenizer("tiny", seed=1).save_pretrained(tmp_path / "tokenizer")
    model = random_model("tiny", seed=1).save_pretrained(tmp_path / "model")
    fixed = random_model({**MODEL_PRESETS["tiny"], "learn_te": False}).save_pretrained(tmp_path / "fixed")
    script = (
        "import sys\n"
        "from kronos_tasks.model import Kronos, KronosTokenizer\n"
        "before = set(sys.modules)\n"
        f"KronosTokenizer.from_pretrained({str(tokenizer)!r}); Kronos.from_pretrained({str(model)!r})\n"
        f"Kronos.from_pretrained({str(fixed)!r})\n"
        "print(sorted(m for m in set(sys.modules) - before if m.startswith(('torch._dynamo', 'torch._meta'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_saved_files_carry_upstream_derived_buffers(tmp_path):
    folder = random_tokenizer("tiny").save_pretrained(tmp_path / "tok")
    tensors = load_file(folder / "model.safetensors")
    assert tensors["tokenizer.bsq.basis"].tolist() == [2**i for i in range(11, -1, -1)]
    assert "encoder.0.self_attn.rotary.inv_freq" in tensors
    model_folder = random_model("tiny").save_pretrained(tmp_path / "model")
    assert "dep_layer.cross_attn.rotary.inv_freq" in load_file(model_folder / "model.safetensors")


def test_tokenizer_round_trip_and_learn_te_false(tmp_path):
    tokenizer = random_tokenizer("tiny", seed=5)
    again = KronosTokenizer.from_pretrained(tokenizer.save_pretrained(tmp_path / "t"))
    x = torch.randn(2, 30, 6)
    s1, s2 = tokenizer.encode(x)
    assert all(torch.equal(a, b) for a, b in zip((s1, s2), again.encode(x)))
    fixed = random_model({**MODEL_PRESETS["tiny"], "learn_te": False}, seed=2)
    loaded = Kronos.from_pretrained(fixed.save_pretrained(tmp_path / "fixed"))
    assert "time_emb.month_embed.emb.weight" in loaded.state_dict()
    stamps = torch.zeros(1, 5, 5)
    tokens = torch.randint(0, 64, (1, 5))
    assert torch.equal(fixed.decode_s1(tokens, tokens, stamps)[0], loaded.decode_s1(tokens, tokens, stamps)[0])


@pytest.fixture
def saved_model(tmp_path):
    return random_model("tiny").save_pretrained(tmp_path / "model")


def test_missing_files_are_named(tmp_path, saved_model):
    with pytest.raises(CheckpointError, match="does not exist"):
        Kronos.from_pretrained(tmp_path / "nowhere")
    (saved_model / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        Kronos.from_pretrained(saved_model)


def test_pickled_weights_are_refused(tmp_path, saved_model):
    (saved_model / "model.safetensors").rename(saved_model / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="never loads pickled weights"):
        Kronos.from_pretrained(saved_model)


def test_bad_config_is_reported_with_its_file(saved_model):
    (saved_model / "config.json").write_text(json.dumps({**MODEL_PRESETS["tiny"], "rope_theta": 1e4}))
    with pytest.raises(CheckpointError, match=r"config.json.*unknown key.*rope_theta"):
        Kronos.from_pretrained(saved_model)
    (saved_model / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Kronos.from_pretrained(saved_model)


def test_missing_or_misshaped_tensors_are_named(saved_model):
    path = saved_model / "model.safetensors"
    tensors = load_file(path)
    removed = dict(tensors)
    del removed["head.proj_s2.bias"]
    save_file(removed, path)
    with pytest.raises(CheckpointError, match=r"missing tensors \['head.proj_s2.bias'\]"):
        Kronos.from_pretrained(saved_model)
    reshaped = dict(tensors)
    reshaped["norm.weight"] = torch.ones(33)
    save_file(reshaped, path)
    with pytest.raises(CheckpointError, match=r"'norm.weight' has shape \(33,\), the config implies \(32,\)"):
        Kronos.from_pretrained(saved_model)
    tampered = dict(tensors)
    tampered["transformer.0.self_attn.rotary.inv_freq"] = tensors["transformer.0.self_attn.rotary.inv_freq"] * 2
    save_file(tampered, path)
    with pytest.raises(
        CheckpointError,
        match="differs from the value the architecture defines; the file was not written by Kronos or is damaged.$",
    ):
        Kronos.from_pretrained(saved_model)
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        Kronos.from_pretrained(saved_model)


def test_pair_with_other_bit_sizes_is_refused():
    tokenizer = TOKENIZER_PRESETS["tiny"]
    model = {**MODEL_PRESETS["tiny"], "s2_bits": 5}
    with pytest.raises(
        ConfigError,
        match="^model predicts s1_bits=6, s2_bits=5 but tokenizer makes s1_bits=6, s2_bits=6: pair the model with",
    ):
        check_pair(random_tokenizer(tokenizer).config, random_model(model).config)


def test_tokenizer_matches_reference(tiny_pair64):
    tokenizer, _ = tiny_pair64
    sd, cfg = tokenizer.state_dict(), tokenizer.config.to_dict()
    x = torch.randn(1, 40, 6, dtype=torch.float64)
    s1, s2 = tokenizer.encode(x)
    ref_s1, ref_s2 = reference.tokenizer_encode(sd, cfg, x[0])
    assert torch.equal(s1[0], ref_s1) and torch.equal(s2[0], ref_s2)
    torch.testing.assert_close(tokenizer.decode((s1, s2))[0], reference.tokenizer_decode(sd, cfg, s1[0], s2[0]))
    joint = tokenizer.encode(x, half=False)
    assert torch.equal(joint, s1 + (s2 << 6))
    torch.testing.assert_close(tokenizer.decode(joint, half=False), tokenizer.decode((s1, s2)))


def test_decode_s1_and_s2_match_reference(tiny_pair64):
    _, model = tiny_pair64
    sd, cfg = model.state_dict(), model.config.to_dict()
    s1, s2 = torch.randint(0, 64, (1, 25)), torch.randint(0, 64, (1, 25))
    stamps = torch.stack([torch.randint(0, n, (1, 25)) for n in (60, 24, 7, 32, 13)], -1).double()
    logits, context = model.decode_s1(s1, s2, stamps)
    ref_context = reference.model_contexts(sd, cfg, s1[0], s2[0], stamps[0])
    torch.testing.assert_close(context[0], ref_context)
    torch.testing.assert_close(logits[0, -1], reference.s1_logits(sd, ref_context))
    next_s1 = torch.tensor([[17]])
    torch.testing.assert_close(
        model.decode_s2(context, next_s1)[0, -1], reference.s2_logits(sd, ref_context, next_s1[0, 0])
    )


def test_padding_mask_gives_each_row_its_unpadded_result(tiny_pair64):
    _, model = tiny_pair64
    s1, s2 = torch.randint(0, 64, (1, 20)), torch.randint(0, 64, (1, 20))
    stamps = torch.zeros(1, 20, 5, dtype=torch.float64)
    alone, ctx_alone = model.decode_s1(s1, s2, stamps)
    pad = 7
    padded = [torch.cat([torch.zeros(1, pad, dtype=torch.long), t], 1) for t in (s1, s2)]
    mask = torch.zeros(1, 20 + pad, dtype=torch.bool)
    mask[:, :pad] = True
    batch, ctx = model.decode_s1(*padded, torch.zeros(1, 20 + pad, 5, dtype=torch.float64), padding_mask=mask)
    torch.testing.assert_close(batch[:, pad:], alone)
    next_s1 = torch.tensor([[3]])
    torch.testing.assert_close(
        model.decode_s2(ctx, next_s1, padding_mask=mask)[:, -1], model.decode_s2(ctx_alone, next_s1)[:, -1]
    )


def test_joined_weights_follow_parameter_changes():
    import torch.nn.functional as F

    from kronos_tasks.model.layers import Linear

    layer = Linear(8, 4)
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        layer.weight.mul_(2)  # in place: the joined copy must be rebuilt
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-6)
    layer.load_state_dict({"weight": torch.zeros(4, 8), "bias": torch.ones(4)})
    assert torch.equal(layer(x), torch.ones(3, 4))
    layer.double()
    assert layer(x.double()).dtype == torch.float64
    with torch.inference_mode():  # parameters made here track no version; they still work
        made_in_inference = Linear(8, 4)
        assert made_in_inference(x).shape == (3, 4)


@pytest.mark.parametrize(
    "change, message",
    [
        # 2**17 x 2**19 floats in one feed-forward matrix: 256 GiB if it were allocated.
        ({"d_model": 2**17, "n_heads": 2**10, "ff_dim": 2**19}, r"has shape .*, the config implies"),
        (
            {"n_layers": 10**7},
            r"asks for 10000000 layers, but .* holds only \d+ tensors: config.json does not belong to these weights.$",
        ),
    ],
)
def test_an_absurd_config_is_refused_from_the_file_header_before_allocating(saved_model, change, message):
    config = json.loads((saved_model / "config.json").read_text())
    (saved_model / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=message):
        Kronos.from_pretrained(saved_model)


def test_config_values_are_checked_at_their_bounds_and_errors_name_the_file():
    from kronos_tasks.model.config import KronosConfig, TokenizerConfig

    model, tokenizer = dict(MODEL_PRESETS["tiny"]), dict(TOKENIZER_PRESETS["tiny"])
    source = "folder/config.json"

    def refused(cls, values, message):
        with pytest.raises(ConfigError, match=f"^{message}$"):
            cls.from_dict(values, source)

    for bits in (1, 16):
        assert KronosConfig.from_dict({**model, "s1_bits": bits, "s2_bits": bits}, source).s1_bits == bits
    for name in ("s1_bits", "s2_bits"):
        for bits in (0, 17):
            refused(KronosConfig, {**model, name: bits}, f"{source}: {name} must be between 1 and 16, got {bits}\\.")
    refused(KronosConfig, {**model, "n_layers": 0}, f"{source}: n_layers must be positive, got 0\\.")
    assert KronosConfig.from_dict({**model, "n_layers": 1}, source).n_layers == 1
    refused(TokenizerConfig, {**tokenizer, "group_size": 0}, f"{source}: group_size must be positive, got 0\\.")
    # floats take integers (JSON writes 0.0 as 0) but not booleans; booleans take nothing else
    assert KronosConfig.from_dict({**model, "ffn_dropout_p": 0}, source).ffn_dropout_p == 0
    refused(
        KronosConfig,
        {**model, "ffn_dropout_p": True},
        f"{source}: key 'ffn_dropout_p' must be of type float, got True\\.",
    )
    refused(
        KronosConfig,
        {**model, "ffn_dropout_p": "0.1"},
        f"{source}: key 'ffn_dropout_p' must be of type float, got '0\\.1'\\.",
    )
    refused(KronosConfig, {**model, "learn_te": 1}, f"{source}: key 'learn_te' must be of type bool, got 1\\.")
    refused(KronosConfig, {**model, "n_heads": 2.0}, f"{source}: key 'n_heads' must be of type int, got 2\\.0\\.")
    for name in ("d_in", "d_model", "n_heads", "ff_dim", "n_enc_layers", "n_dec_layers"):
        refused(TokenizerConfig, {**tokenizer, name: 0}, f"{source}: {name} must be positive, got 0\\.")
    for name in ("d_model", "n_heads", "ff_dim"):
        refused(KronosConfig, {**model, name: 0}, f"{source}: {name} must be positive, got 0\\.")
    refused(TokenizerConfig, {**tokenizer, "s2_bits": 0}, f"{source}: s2_bits must be between 1 and 16, got 0\\.")
    refused(TokenizerConfig, {**tokenizer, "beta": "x"}, f"{source}: key 'beta' must be of type float, got 'x'\\.")
    with pytest.raises(ConfigError, match=f"^{source}: unknown key"):
        TokenizerConfig.from_dict({**tokenizer, "extra": 1}, source)
    with pytest.raises(ConfigError, match=f"^{source}: missing key"):
        KronosConfig.from_dict({k: v for k, v in model.items() if k != "ff_dim"}, source)
    refused(
        KronosConfig,
        {**model, "d_model": 36, "n_heads": 4},
        f"{source}: d_model 36 must split into an even head size for 4 heads\\.",
    )
    # a head size of 36 / 4 = 9 is odd: rotary positions rotate pairs of dimensions
    refused(
        TokenizerConfig,
        {**tokenizer, "d_model": 36, "n_heads": 4},
        f"{source}: the head size d_model/n_heads must be even for rotary positions\\.",
    )
    refused(
        TokenizerConfig,
        {**tokenizer, "n_heads": 5},
        f"{source}: d_model {tokenizer['d_model']} is not divisible by n_heads 5\\.",
    )


def test_fixed_time_embeddings_are_the_frozen_sinusoid_table():
    from kronos_tasks.model.kronos import FixedEmbedding

    fixed = FixedEmbedding(32, 16)
    torch.testing.assert_close(fixed.emb.weight.double(), reference.sinusoid_table(32, 16), rtol=0, atol=2e-6)
    assert not fixed.emb.weight.requires_grad


def test_rms_norm_of_half_precision_normalises_in_float32():
    from kronos_tasks.model.layers import RMSNorm

    norm = RMSNorm(16)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 16))
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0)) * 1e-3  # small: eps matters
    want = reference.rms_norm(x, norm.weight.detach()).detach()
    for dtype in (torch.bfloat16, torch.float16):
        torch.testing.assert_close(norm(x.to(dtype)).float(), want, rtol=1e-2, atol=0)


@pytest.mark.skipif(
    not (
        torch.backends.mkldnn.is_available()
        and sys.platform == "linux"
        and __import__("platform").machine() == "x86_64"
    ),
    reason="oneDNN weight packing is probed on x86-64 Linux builds, where torch ships it",
)
def test_float32_linear_layers_use_the_packed_onednn_weight_on_x86():
    from kronos_tasks.model.layers import ONEDNN_PACKED_LINEAR, Linear, _onednn_packing_works

    assert ONEDNN_PACKED_LINEAR and _onednn_packing_works()  # on the builds we benchmark (bench/RESULTS.md)
    layer = Linear(8, 4)
    x = torch.randn(5, 8)
    with torch.no_grad():
        got = layer(x)
    assert layer.joined.packed and layer.joined.weight.is_mkldnn
    torch.testing.assert_close(got, x @ layer.weight.T + layer.bias, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("build", [lambda: random_model("tiny"), lambda: random_tokenizer("tiny")])
def test_derived_rotary_buffers_are_those_of_the_attention_layers_upstream_has(build):
    from kronos_tasks.model.checkpoint import derived_tensors

    module = build()
    attentions = {name for name, _ in module.named_modules() if name.endswith(("self_attn", "cross_attn"))}
    rotary = {k.removesuffix(".rotary.inv_freq") for k in derived_tensors(module.config) if k.endswith("inv_freq")}
    assert rotary == attentions


def test_saved_folders_are_hugging_face_checkpoints_and_load_frozen_in_eval_mode(tmp_path):
    from safetensors import safe_open

    model = random_model("tiny", seed=3)
    folder = model.save_pretrained(tmp_path / "model")
    model.save_pretrained(folder)  # saving again into the same folder replaces the files
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}  # what transformers' loaders require
    text = (folder / "config.json").read_text()
    lines = text.splitlines()
    assert text.endswith("}\n") and lines[0] == "{" and all(line.startswith('  "') for line in lines[1:-1])
    keys = [line.split('"')[1] for line in lines[1:-1]]
    assert keys == sorted(keys) and set(keys) == PUBLISHED_MODEL_KEYS
    loaded = Kronos.from_pretrained(folder)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_a_mismatch_lists_at_most_eight_tensors_of_each_kind(saved_model):
    path = saved_model / "model.safetensors"
    tensors = load_file(path)
    missing = sorted(k for k in tensors if not k.endswith("inv_freq"))[:9]
    extra = {f"extra.{i}": torch.zeros(1) for i in range(9)}
    kept = {k: v for k, v in tensors.items() if k not in missing}
    save_file({**kept, **extra}, path)
    with pytest.raises(CheckpointError) as raised:
        Kronos.from_pretrained(saved_model)
    message = str(raised.value)
    assert f"missing tensors {missing[:8]} ..., " in message
    assert f"unexpected tensors {sorted(extra)[:8]} .... Check that config.json belongs to these weights." in message
    save_file({**tensors, **dict(list(extra.items())[:8])}, path)
    with pytest.raises(CheckpointError, match=r"missing tensors \[\], unexpected tensors \[.*'extra.7'\]\. Check"):
        Kronos.from_pretrained(saved_model)


def test_checkpoint_errors_say_what_is_wrong_and_what_to_do(tmp_path, saved_model):
    (saved_model / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config\.json must hold a JSON object of constructor arguments\.$"):
        Kronos.from_pretrained(saved_model)
    (saved_model / "config.json").unlink()
    with pytest.raises(
        CheckpointError,
        match=r"config\.json is missing: a checkpoint folder needs config\.json and model\.safetensors "
        r"\(the layout of the published Hugging Face checkpoints\)\.$",
    ):
        Kronos.from_pretrained(saved_model)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(MODEL_PRESETS["tiny"]))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing\.$"):
        Kronos.from_pretrained(empty)
    (empty / "weights.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"It holds \['weights\.pth'\]: kronos-flow never loads pickled"):
        Kronos.from_pretrained(empty)


def test_random_pairs_are_saved_as_tokenizer_and_model_folders_and_follow_their_seed(tmp_path):
    from kronos_tasks.model.presets import write_random_pair

    def weights(folders):
        return [load_file(folder / "model.safetensors") for folder in folders]

    default = write_random_pair(tmp_path / "default")
    assert default == (tmp_path / "default" / "tokenizer", tmp_path / "default" / "model")
    assert json.loads((default[1] / "config.json").read_text()) == MODEL_PRESETS["tiny"]
    for seed, same in ((0, True), (5, False)):
        for got, want in zip(weights(default), weights(write_random_pair(tmp_path / f"seed{seed}", seed=seed))):
            assert all(torch.equal(got[k], want[k]) for k in got) == same


def test_joint_token_ids_carry_s1_in_the_low_bits_and_decode_like_the_halves():
    tokenizer = random_tokenizer("tiny", seed=5)
    x = torch.randn(2, 30, 6, generator=torch.Generator().manual_seed(1))
    s1, s2 = tokenizer.encode(x)
    joint = tokenizer.encode(x, half=False)
    bits = tokenizer.s1_bits
    assert torch.equal(joint, s1 + s2 * 2**bits) and s2.max() > 0
    torch.testing.assert_close(tokenizer.decode(joint, half=False), tokenizer.decode((s1, s2)), rtol=0, atol=0)


def test_dropout_modules_exist_only_where_a_probability_is_set():
    from torch import nn

    from kronos_tasks.model.layers import TransformerBlock, dropout

    assert isinstance(dropout(0.0), nn.Identity) and isinstance(dropout(0.5), nn.Dropout)
    assert isinstance(dropout(1.0), nn.Dropout) and dropout(0.25).p == 0.25
    plain = TransformerBlock(16, 2, 32)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    dropping = TransformerBlock(16, 2, 32, ffn_dropout_p=0.1, resid_dropout_p=0.2)
    assert (dropping.ffn_dropout.p, dropping.resid_dropout.p) == (0.1, 0.2)


@pytest.mark.parametrize("build, presets", [(random_model, MODEL_PRESETS), (random_tokenizer, TOKENIZER_PRESETS)])
def test_random_modules_are_frozen_seeded_and_scaled_like_trained_ones(build, presets):
    from torch import nn

    module = build()  # the defaults: the tiny preset, seed 0
    assert not module.training and not any(p.requires_grad for p in module.parameters())
    for same in (build("tiny"), build(presets["tiny"], seed=0)):
        assert module.config == same.config
        assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), same.state_dict().values()))
    d_model = presets["tiny"]["d_model"]
    tables = [m.weight.flatten() for m in module.modules() if isinstance(m, nn.Embedding) and m.weight.numel() > 500]
    for table in tables:  # drawn with mean 0 and std d_model^-1/2 (the fixed sinusoid table is not drawn)
        assert abs(table.mean()) < 4 * d_model**-0.5 / table.numel() ** 0.5
        assert abs(table.std() / d_model**-0.5 - 1) < 0.15
    assert bool(tables) == (build is random_model)
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    assert any(m.bias is not None for m in linears)
    assert all(m.bias is None or not m.bias.any() for m in linears)  # xavier weights, zero biases


def test_a_bad_tokenizer_config_names_the_constructor():
    with pytest.raises(ConfigError, match="^KronosTokenizer: "):
        KronosTokenizer(**{**TOKENIZER_PRESETS["tiny"], "d_model": 0})
    with pytest.raises(ConfigError, match="^Kronos: "):
        Kronos(**{**MODEL_PRESETS["tiny"], "d_model": 0})


def test_dropout_probabilities_reach_the_blocks_they_name():
    for cls, preset in ((Kronos, MODEL_PRESETS["tiny"]), (KronosTokenizer, TOKENIZER_PRESETS["tiny"])):
        module = cls(**{**preset, "ffn_dropout_p": 0.1, "resid_dropout_p": 0.2})
        blocks = [m for m in module.modules() if type(m).__name__ == "TransformerBlock"]
        assert blocks and all((b.ffn_dropout.p, b.resid_dropout.p) == (0.1, 0.2) for b in blocks)


def test_linear_layers_add_their_bias_in_every_dtype():
    from kronos_tasks.model.layers import Linear

    layer = Linear(8, 4)
    with torch.no_grad():
        layer.bias.copy_(torch.arange(4.0))
    x = torch.randn(3, 8)
    for dtype in (torch.float32, torch.float64):
        layer.to(dtype)
        with torch.no_grad():
            got = layer(x.to(dtype))
        torch.testing.assert_close(got, x.to(dtype) @ layer.weight.T + layer.bias, rtol=1e-5, atol=1e-5)


def test_the_s2_layer_refuses_s1_of_another_length_and_causal_padded_windows():
    layer = random_model("tiny").dep_layer
    d_model = MODEL_PRESETS["tiny"]["d_model"]
    context = torch.randn(2, 5, d_model)
    with pytest.raises(ValueError, match=r"^s1 ids must have 1 or 5 positions, got 3\.$"):
        layer(context, torch.randn(2, 3, d_model))
    valid = torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(
        ValueError, match=r"^causal s2 conditioning is for unpadded training windows; pass valid=None\.$"
    ):
        layer(context, torch.randn(2, 5, d_model), valid, causal=True)
