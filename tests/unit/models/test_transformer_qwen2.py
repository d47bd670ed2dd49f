"""Our Qwen2 against `transformers.Qwen2ForCausalLM` with the same weights."""

import dataclasses

import pytest
import torch

from aurora.models.transformer import (
    TRANSFORMER_PRESETS,
    KVCache,
    Qwen2ForCausalLM,
    TransformerConfig,
)

transformers = pytest.importorskip("transformers")


def hf_model(config: TransformerConfig, attn: str) -> "transformers.Qwen2ForCausalLM":
    hf_config = transformers.Qwen2Config(
        **dataclasses.asdict(config), use_sliding_window=False, attn_implementation=attn
    )
    return transformers.Qwen2ForCausalLM(hf_config).eval()


def pair(tie: bool, attn: str = "eager"):
    torch.manual_seed(0)
    config = dataclasses.replace(TRANSFORMER_PRESETS["tiny"], tie_word_embeddings=tie)
    ours = Qwen2ForCausalLM(config)
    # Random norms and biases too, so that a misplaced one cannot hide behind ones and zeros.
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p) + (1 if "norm" in name else 0))
    theirs = hf_model(config, attn)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


@pytest.mark.parametrize("tie", [True, False])
def test_parameter_names_match(tie):
    ours, theirs = pair(tie)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tie


@pytest.mark.parametrize("tie,attn", [(True, "eager"), (False, "eager"), (True, "sdpa")])
def test_logits_match_transformers(tie, attn):
    ours, theirs = pair(tie, attn)
    ids = torch.randint(0, ours.config.vocab_size, (3, 17))
    with torch.no_grad():
        expected = theirs(input_ids=ids).logits
        torch.testing.assert_close(ours(ids), expected, atol=1e-5, rtol=1e-5)
        # Embeddings in, explicit (shifted) positions: still the same function.
        pos = torch.arange(5, 22)[None].expand(3, -1)
        embeds = ours.model.embed_tokens(ids)
        expected = theirs(inputs_embeds=embeds, position_ids=pos).logits
        actual = ours(inputs_embeds=embeds, position_ids=pos)
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_kv_cache_decoding_equals_full_forward():
    ours, _ = pair(tie=True)
    ids = torch.randint(0, ours.config.vocab_size, (2, 12))
    with torch.no_grad():
        full = ours(ids)
        cache = KVCache(ours.config.num_hidden_layers)
        # A prefill of several tokens, then one token at a time, then a chunk of two.
        steps = [ours(ids[:, :5], kv_cache=cache)]
        steps += [ours(ids[:, t : t + 1], kv_cache=cache) for t in range(5, 10)]
        steps.append(ours(ids[:, 10:], kv_cache=cache))
    assert cache.seq_len == 12
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_exactly_one_input():
    ours, _ = pair(tie=True)
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError):
        ours()
    with pytest.raises(ValueError):
        ours(ids, inputs_embeds=ours.model.embed_tokens(ids))


def test_initialisation():
    model = Qwen2ForCausalLM(TransformerConfig(hidden_size=256, vocab_size=2048))
    for name, p in model.named_parameters():
        if "norm" in name:
            assert torch.all(p == 1), name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        else:
            assert abs(p.std().item() - 0.02) < 0.002, name


# Qwen2 base models' published sizes (transformers' num_parameters(), tied weights counted once).
@pytest.mark.parametrize(
    "name,expected",
    [("qwen2-0.5b", 494_032_768), ("qwen2-1.5b", 1_543_714_304), ("qwen2-7b", 7_615_616_512)],
)
def test_preset_parameter_counts(name, expected):
    config = TRANSFORMER_PRESETS[name]
    H, I, V = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = config.num_key_value_heads * config.head_dim
    per_layer = (H * H + H) + 2 * (H * kv + kv) + H * H + 3 * H * I + 2 * H
    embeddings = V * H * (1 if config.tie_word_embeddings else 2)
    arithmetic = config.num_hidden_layers * per_layer + H + embeddings
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == arithmetic == expected
