"""Tests of llmlab.model: Llama parity, backend parity, causality, the HF wrapper, config checks.

CPU, float32. Tolerances are fixed in advance (levanter's rule: 1e-5 for simple modules, 1e-4
for a whole model against another implementation) and never loosened to make a test pass.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError

from llmlab.model import (
    AttentionConfig,
    LlmlabConfig,
    LlmlabForCausalLM,
    ModelConfig,
    Transformer,
    build_model,
    from_hf_llama,
)
from llmlab.model.attention import AttentionPattern, FlashAttention

VOCAB = 128
MODEL_TOL = 1e-4  # whole model vs Hugging Face Llama
KERNEL_TOL = 1e-5  # same model, different attention kernel


def tiny_config(**overrides: object) -> ModelConfig:
    fields: dict[str, object] = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4)
    return ModelConfig(**(fields | overrides))


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def random_ids(batch: int = 2, length: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# --- parity with Hugging Face Llama -----------------------------------------------------------


def tiny_llama(**overrides: object):
    from transformers import LlamaConfig, LlamaForCausalLM

    fields: dict[str, object] = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**(fields | overrides))).eval()
    # Llama's norms start at exactly 1: perturb them so that a norm weight copied to the wrong
    # place cannot go unnoticed.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"rope_parameters": {"rope_type": "default", "rope_theta": 500.0}},
        {"tie_word_embeddings": True},
        {"attention_bias": True, "mlp_bias": True, "num_key_value_heads": 4},
    ],
    ids=["default", "rope_theta_500", "tied", "bias_mha"],
)
def test_llama_parity(overrides: dict[str, object]) -> None:
    hf = tiny_llama(**overrides)
    ours = from_hf_llama(hf).eval()
    if "rope_parameters" in overrides:
        assert ours.config.rope_theta == 500.0
    assert ours.config.tie_embeddings == hf.config.tie_word_embeddings
    if ours.config.tie_embeddings:
        assert ours.lm_head.weight is ours.embed_tokens.weight
    ids = random_ids(length=32)
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
        got = ours(ids)
    assert max_abs_diff(got, expected) < MODEL_TOL


def test_bf16_autocast_is_as_accurate_as_hugging_face_llama() -> None:
    """Under bf16 autocast ours runs the rotary arithmetic in bf16 and casts each sub-layer's input
    once; its logits and gradients must stay as close to the float32 truth as Llama's own bf16
    forward does (Llama keeps q and k in float32 through RoPE and casts per projection)."""
    hf = tiny_llama(max_position_embeddings=256)
    ours = from_hf_llama(hf)
    ids = random_ids(length=256)

    def logits_and_grad(model: torch.nn.Module, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits, and the gradient of a loss-like function of them at the first layer's q weights."""
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(ids) if model is ours else model(input_ids=ids).logits
        logits.float().logsumexp(-1).mean().backward()
        q_proj = ours.layers[0].attn.q_proj if model is ours else hf.model.layers[0].self_attn.q_proj
        return logits.float(), q_proj.weight.grad.clone()

    def errors(model: torch.nn.Module) -> tuple[float, float]:
        """Mean absolute logit error; mean gradient error relative to the gradient's mean size."""
        logits, grad = logits_and_grad(model, bf16=True)
        grad_error = (grad - truth_grad).abs().mean() / truth_grad.abs().mean()
        return (logits - truth_logits).abs().mean().item(), grad_error.item()

    truth_logits, truth_grad = logits_and_grad(hf, bf16=False)
    llama_errors, our_errors = errors(hf), errors(ours)
    # Over seeds the ratios ran 0.89-1.07; rotary angles rounded to bf16 would be off by far more.
    pairs = zip(our_errors, llama_errors, strict=True)
    assert all(0 < ours_ <= 1.25 * theirs for ours_, theirs in pairs), (our_errors, llama_errors)


def test_llama_import_refuses_rope_scaling() -> None:
    hf = tiny_llama(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})
    with pytest.raises(ValueError, match="rope_type='linear'"):
        from_hf_llama(hf)


# --- attention backends -----------------------------------------------------------------------

BACKEND_CASES = [
    dict(n_kv_heads=kv, position=pos, norm=norm, mlp=mlp, bias=bias)
    for kv, pos, norm, mlp, bias in [
        (None, "rope", "rmsnorm", "swiglu", False),
        (2, "rope", "rmsnorm", "swiglu", False),
        (1, "learned", "layernorm", "gelu", True),
        (2, "learned", "rmsnorm", "gelu", False),
        (None, "rope", "layernorm", "swiglu", True),
        (4, "rope", "layernorm", "gelu", False),
    ]
]


def forward_and_grads(config: ModelConfig, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(0)
    model = Transformer(config)
    logits = model(ids)
    logits.float().square().mean().backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("case", BACKEND_CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_reference_and_sdpa_agree(case: dict[str, object]) -> None:
    ids = random_ids()
    ref_logits, ref_grads = forward_and_grads(tiny_config(**case, attention=AttentionConfig(backend="reference")), ids)
    sdpa_logits, sdpa_grads = forward_and_grads(tiny_config(**case, attention=AttentionConfig(backend="sdpa")), ids)
    assert max_abs_diff(ref_logits, sdpa_logits) < KERNEL_TOL
    assert ref_grads.keys() == sdpa_grads.keys()
    for name in ref_grads:
        assert max_abs_diff(ref_grads[name], sdpa_grads[name]) < KERNEL_TOL, name


FLASH_READY = importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


@pytest.mark.skipif(not FLASH_READY, reason="needs the flash-attn package and a CUDA device")
def test_flash_attn_matches_sdpa_on_gpu() -> None:
    ids = random_ids(length=64).cuda()
    logits = {}
    for backend in ("sdpa", "flash_attn"):
        torch.manual_seed(0)
        config = tiny_config(n_kv_heads=2, attention=AttentionConfig(backend=backend))
        model = Transformer(config).cuda().to(torch.bfloat16)
        with torch.no_grad():
            logits[backend] = model(ids).float()
    # bf16 kernels differ in accumulation order; 2e-2 is bf16 resolution at logit scale ~1.
    assert max_abs_diff(logits["sdpa"], logits["flash_attn"]) < 2e-2


@pytest.mark.skipif(FLASH_READY, reason="flash-attn can run here")
def test_flash_attn_refused_at_build_with_a_clear_message() -> None:
    config = tiny_config(attention=AttentionConfig(backend="flash_attn"))
    with pytest.raises(RuntimeError, match=r"backend=flash_attn .*use backend=sdpa") as info:
        Transformer(config)
    assert "\n" not in str(info.value)


def test_flash_attn_refuses_cpu_tensors_at_forward() -> None:
    # Built directly, past the build-time check, to reach the forward-time one.
    backend = FlashAttention(AttentionPattern())
    q_BLHD = torch.zeros(1, 4, 2, 8)
    with pytest.raises(RuntimeError, match=r"CUDA tensors only.*use backend=sdpa"):
        backend(q_BLHD, q_BLHD, q_BLHD)


# --- model behaviour --------------------------------------------------------------------------


@pytest.mark.parametrize("position", ["rope", "learned"])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_causal(position: str, backend: str) -> None:
    config = tiny_config(position=position, attention=AttentionConfig(backend=backend))
    model = Transformer(config).eval()
    ids = random_ids(batch=1, length=12)
    t = 7
    changed = ids.clone()
    changed[0, t] = (ids[0, t] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(ids), model(changed)
    assert torch.equal(before[:, :t], after[:, :t])
    assert not torch.allclose(before[:, t:], after[:, t:])


def test_init_scales_residual_projections_and_ties_head() -> None:
    config = tiny_config(n_layers=8, d_model=256, init_std=0.02)
    model = Transformer(config)
    assert model.lm_head.weight is model.embed_tokens.weight
    q_std = model.layers[0].attn.q_proj.weight.std().item()
    o_std = model.layers[0].attn.o_proj.weight.std().item()
    down_std = model.layers[0].mlp.down_proj.weight.std().item()
    assert abs(q_std - 0.02) < 2e-3
    assert abs(o_std - 0.02 / 4) < 1e-3  # 1/sqrt(2 * 8) = 1/4
    assert abs(down_std - 0.02 / 4) < 1e-3


def test_num_parameters_counts_tied_weights_once() -> None:
    config = tiny_config(position="learned")
    tied, untied = (
        Transformer(config),
        Transformer(config.model_copy(update={"tie_embeddings": False})),
    )
    vocab_table = VOCAB * config.d_model
    assert untied.num_parameters() == tied.num_parameters() + vocab_table
    assert tied.num_parameters(exclude_embeddings=True) == untied.num_parameters(exclude_embeddings=True)
    positions = config.max_seq_len * config.d_model
    assert tied.num_parameters() - tied.num_parameters(True) == vocab_table + positions


def test_build_model_fills_vocab_size() -> None:
    config = ModelConfig(d_model=32, n_layers=1, n_heads=2)
    with pytest.raises(ValueError, match="vocab_size is None"):
        Transformer(config)
    assert build_model(config, vocab_size=50).embed_tokens.num_embeddings == 50
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        build_model(config.model_copy(update={"vocab_size": 10}), vocab_size=50)


def test_forward_rejects_too_long_input() -> None:
    model = Transformer(tiny_config(max_seq_len=8))
    with pytest.raises(ValueError, match="max_seq_len=8"):
        model(random_ids(length=9))


def test_inputs_embeds_equal_input_ids() -> None:
    model = Transformer(tiny_config(position="learned")).eval()
    ids = random_ids()
    with torch.no_grad():
        assert torch.equal(model(ids), model(inputs_embeds=model.embed_tokens(ids)))


# --- Hugging Face wrapper ---------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_save_and_from_pretrained_round_trip(tmp_path, tie: bool) -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_config(n_kv_heads=2, tie_embeddings=tie))
    wrapped = LlmlabForCausalLM.from_transformer(model).eval()
    wrapped.save_pretrained(tmp_path)
    loaded = LlmlabForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.to_model_config() == model.config
    assert (loaded.model.lm_head.weight is loaded.model.embed_tokens.weight) == tie
    ids = random_ids()
    with torch.no_grad():
        assert torch.equal(wrapped(ids).logits, loaded(ids).logits)


def test_from_transformer_shares_weights() -> None:
    model = Transformer(tiny_config())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    wrapped = LlmlabForCausalLM.from_transformer(model)
    assert wrapped.model is model
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    assert wrapped.get_input_embeddings() is model.embed_tokens
    assert wrapped.device == torch.device("cpu")


def test_loss_is_shifted_cross_entropy() -> None:
    wrapped = LlmlabForCausalLM.from_transformer(Transformer(tiny_config())).eval()
    ids = random_ids()
    labels = ids.clone()
    labels[:, :3] = -100
    out = wrapped(input_ids=ids, labels=labels, attention_mask=torch.ones_like(ids))
    expected = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    assert out.loss.dtype == torch.float32
    assert torch.allclose(out.loss, expected)


def test_padding_mask_is_refused() -> None:
    wrapped = LlmlabForCausalLM.from_transformer(Transformer(tiny_config()))
    ids = random_ids()
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with pytest.raises(ValueError, match="padding"):
        wrapped(input_ids=ids, attention_mask=mask)


def test_generate_equals_manual_greedy_loop() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_config(n_kv_heads=2)).eval()
    wrapped = LlmlabForCausalLM.from_transformer(model)
    prompt = random_ids(batch=2, length=6)
    out = wrapped.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False)
    ids = prompt
    with torch.no_grad():
        for _ in range(5):
            next_id = model(ids)[:, -1].argmax(dim=-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    assert torch.equal(out, ids)


def test_hf_config_round_trips_model_config() -> None:
    config = tiny_config(n_kv_heads=2, position="learned", attention=AttentionConfig(backend="reference"))
    hf_config = LlmlabConfig.from_model_config(config)
    assert hf_config.to_model_config() == config
    # PEFT reads these names from config.to_dict().
    as_dict = hf_config.to_dict()
    assert as_dict["hidden_size"] == 64 and as_dict["num_hidden_layers"] == 2
    assert as_dict["num_attention_heads"] == 4 and as_dict["vocab_size"] == VOCAB
    assert LlmlabConfig.from_dict(as_dict).to_model_config() == config
    with pytest.raises(ValueError, match="hidden_size=32 disagrees with d_model"):
        LlmlabConfig(**config.model_dump(), hidden_size=32)


# --- config validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"d_model": 66, "n_heads": 4}, "divisible by model.n_heads"),
        ({"n_heads": 4, "n_kv_heads": 3}, "n_kv_heads"),
        ({"d_model": 12, "n_heads": 4}, "must be an even number"),
        ({"d_model": 64, "n_heads": 4, "rope_fraction": 0.3}, "must be an even number"),
        ({"dropout": 1.0}, "less than 1"),
        ({"vocab_size": 0}, "greater than 0"),
        ({"norm": "batchnorm"}, "norm"),
        ({"unknown_field": 1}, "Extra inputs"),
    ],
)
def test_config_validation(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelConfig(**overrides)


def test_config_defaults_and_derived_sizes() -> None:
    config = ModelConfig()
    assert (config.head_dim, config.kv_heads) == (64, 4)
    assert config.ffn_dim == 704  # int(8 * 256 / 3) = 682, rounded up to a multiple of 64
    assert ModelConfig(mlp="gelu").ffn_dim == 1024
    assert ModelConfig(d_model=12, n_heads=4, position="learned").head_dim == 3
    for name, field in ModelConfig.model_fields.items():
        assert field.description, name


def test_import_does_not_load_ray_or_mlflow() -> None:
    code = "import sys, llmlab.model; bad = {'ray', 'mlflow', 'transformers'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)
