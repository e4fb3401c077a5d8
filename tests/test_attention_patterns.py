"""Sparse/dense attention patterns and packed documents, against brute-force references.

The masks are checked against definitions written out position by position (Sparse Transformer,
Longformer); every backend is checked against the reference backend, which applies that mask
explicitly, forward and gradients; documents are checked against each document run on its own.
"""

from __future__ import annotations

import importlib.util
import itertools

import pytest
import torch

from llmlab.model import AttentionConfig, ModelConfig, Transformer
from llmlab.model.attention import ATTENTION_BACKENDS, FlexAttention, build_attention_backend
from llmlab.model.masks import (
    AttentionContext,
    AttentionPattern,
    cu_seqlens,
    documents_from_separators,
    explicit_mask,
    positions_from_documents,
)

KERNEL_TOL = 1e-5
VOCAB = 64
KINDS = ["dense", "local", "strided", "local_strided"]


def brute_force_allowed(kind: str, causal: bool, window: int, stride: int, i: int, j: int) -> bool:
    """The patterns' definitions, one (query i, key j) pair at a time."""
    if causal and j > i:
        return False
    distance = abs(i - j)
    in_window = distance < window
    on_stride = distance % stride == 0
    return {"dense": True, "local": in_window, "strided": on_stride, "local_strided": in_window or on_stride}[kind]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_masks_follow_the_definitions(kind: str, causal: bool) -> None:
    length, window, stride = 19, 4, 5
    pattern = AttentionPattern(causal=causal, kind=kind, window=window, stride=stride)
    mask = explicit_mask(pattern, length, length, torch.device("cpu"), AttentionContext())[0, 0]
    expected = torch.tensor(
        [[brute_force_allowed(kind, causal, window, stride, i, j) for j in range(length)] for i in range(length)]
    )
    assert torch.equal(mask, expected)


def test_document_masks_and_positions() -> None:
    eos = 0
    tokens = torch.tensor([[5, 6, eos, 7, eos, 8, 9, 3]])
    docs = documents_from_separators(tokens, eos)
    assert docs.tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]
    assert positions_from_documents(docs).tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    mask = explicit_mask(AttentionPattern(), 8, 8, torch.device("cpu"), AttentionContext.for_documents(docs))[0, 0]
    expected = torch.tensor(
        [[j <= i and docs[0, i] == docs[0, j] for j in range(8)] for i in range(8)], dtype=torch.bool
    )
    assert torch.equal(mask, expected)
    bounds, longest = cu_seqlens(torch.cat((docs, docs)))
    assert bounds.tolist() == [0, 3, 5, 8, 11, 13, 16] and longest == 3


# --- backends against the reference --------------------------------------------------------------


def qkv(batch: int = 2, length: int = 24, heads: int = 4, kv_heads: int = 2, dim: int = 8, grad: bool = True):
    gen = torch.Generator().manual_seed(0)
    shapes = [(batch, length, heads, dim), (batch, length, kv_heads, dim), (batch, length, kv_heads, dim)]
    return [torch.randn(*shape, generator=gen).requires_grad_(grad) for shape in shapes]


def outputs_and_grads(backend_name: str, pattern: AttentionPattern, context: AttentionContext):
    q, k, v = qkv()
    out = ATTENTION_BACKENDS[backend_name](pattern)(q, k, v, context)
    out.square().sum().backward()
    return out.detach(), [t.grad for t in (q, k, v)]


def random_documents(batch: int = 2, length: int = 24) -> torch.Tensor:
    cuts = torch.tensor([[0] * 5 + [1] * 11 + [2] * 8, [0] * 13 + [1] * 11])
    return cuts[:batch, :length]


PATTERN_CASES = [
    AttentionPattern(causal=causal, kind=kind, window=5, stride=4)
    for kind, causal in itertools.product(KINDS, [True, False])
]


@pytest.mark.parametrize("documents", [False, True], ids=["rows", "documents"])
@pytest.mark.parametrize("pattern", PATTERN_CASES, ids=lambda p: p.describe().replace(" ", "-"))
def test_sdpa_equals_reference_forward_and_gradients(pattern: AttentionPattern, documents: bool) -> None:
    context = AttentionContext.for_documents(random_documents() if documents else None)
    ref_out, ref_grads = outputs_and_grads("reference", pattern, context)
    sdpa_out, sdpa_grads = outputs_and_grads("sdpa", pattern, AttentionContext.for_documents(context.q_docs_BL))
    assert (ref_out - sdpa_out).abs().max() < KERNEL_TOL
    for ref_grad, sdpa_grad in zip(ref_grads, sdpa_grads, strict=True):
        assert (ref_grad - sdpa_grad).abs().max() < KERNEL_TOL


@pytest.mark.parametrize("documents", [False, True], ids=["rows", "documents"])
@pytest.mark.parametrize("pattern", PATTERN_CASES[::3], ids=lambda p: p.describe().replace(" ", "-"))
def test_flex_forward_equals_reference_on_cpu(pattern: AttentionPattern, documents: bool) -> None:
    # FlexAttention has no CPU backward (a PyTorch limit); its gradients are checked on GPU below.
    context = AttentionContext.for_documents(random_documents() if documents else None)
    q, k, v = qkv(grad=False)
    expected = ATTENTION_BACKENDS["reference"](pattern)(q, k, v, context)
    with torch.no_grad():
        got = FlexAttention(pattern)(q, k, v, AttentionContext.for_documents(context.q_docs_BL))
    assert (expected - got).abs().max() < KERNEL_TOL


def test_flex_refuses_cpu_training_with_a_clear_message() -> None:
    q, k, v = qkv()
    with pytest.raises(RuntimeError, match=r"backend=flex has no backward on CPU.*backend=sdpa"):
        FlexAttention(AttentionPattern())(q, k, v)


def test_local_with_a_window_beyond_the_row_is_dense() -> None:
    q, k, v = qkv(grad=False)
    dense = ATTENTION_BACKENDS["sdpa"](AttentionPattern())(q, k, v)
    wide = ATTENTION_BACKENDS["sdpa"](AttentionPattern(kind="local", window=24))(q, k, v)
    narrow = ATTENTION_BACKENDS["sdpa"](AttentionPattern(kind="local", window=3))(q, k, v)
    assert (dense - wide).abs().max() < KERNEL_TOL
    assert (dense - narrow).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("backend", "kind", "message"),
    [
        ("sdpa_flash", "local", "takes no attention mask"),
        ("flash_attn", "strided", "has no strided pattern|needs the flash-attn package|needs a CUDA"),
        ("sdpa_cudnn", "dense", "needs a CUDA device"),
    ],
)
def test_backends_refuse_what_they_cannot_compute(backend: str, kind: str, message: str) -> None:
    if backend == "sdpa_cudnn" and torch.cuda.is_available():
        pytest.skip("cuDNN attention runs here")
    with pytest.raises(RuntimeError, match=message) as info:
        build_attention_backend(AttentionConfig(backend=backend), AttentionPattern(kind=kind, window=4, stride=4))
    assert str(info.value).startswith(f"model.attention.backend={backend} ")
    assert "\n" not in str(info.value)


# --- whole models -------------------------------------------------------------------------------


def tiny_model(seed: int = 0, **overrides: object) -> Transformer:
    torch.manual_seed(seed)
    fields: dict[str, object] = dict(vocab_size=VOCAB, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=64)
    return Transformer(ModelConfig(**(fields | overrides)))


@pytest.mark.parametrize("pattern", [["dense", "local"], ["local_strided", "dense", "strided"]])
def test_alternating_layers_equal_the_reference(pattern: list[str]) -> None:
    ids = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(1))
    results = {}
    for backend in ("reference", "sdpa"):
        model = tiny_model(attention=AttentionConfig(backend=backend, pattern=pattern, window=6, stride=5))
        logits = model(ids)
        logits.square().mean().backward()
        results[backend] = (logits.detach(), {n: p.grad for n, p in model.named_parameters()})
    kinds = [layer.attn.inner_attention.pattern.kind for layer in model.layers]
    assert kinds == [pattern[i % len(pattern)] for i in range(4)]
    (ref_logits, ref_grads), (sdpa_logits, sdpa_grads) = results["reference"], results["sdpa"]
    assert (ref_logits - sdpa_logits).abs().max() < KERNEL_TOL
    for name, grad in ref_grads.items():
        assert (grad - sdpa_grads[name]).abs().max() < KERNEL_TOL, name


def test_a_local_model_differs_from_a_dense_one() -> None:
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(2))
    dense = tiny_model()(ids)
    local = tiny_model(attention=AttentionConfig(pattern=["dense", "local"], window=4))(ids)
    # Same weights: the first 4 positions see the same keys either way; later ones do not.
    assert (dense[:, :4] - local[:, :4]).abs().max() < KERNEL_TOL
    assert (dense[:, 8:] - local[:, 8:]).abs().max() > 1e-3


@pytest.mark.parametrize("position", ["rope", "learned", "none"])
@pytest.mark.parametrize("pattern", [["dense"], ["dense", "local"]])
def test_packed_documents_equal_each_document_alone(position: str, pattern: list[str]) -> None:
    model = tiny_model(position=position, attention=AttentionConfig(pattern=pattern, window=4)).eval()
    gen = torch.Generator().manual_seed(3)
    lengths = [7, 12, 5]
    documents = [torch.randint(1, VOCAB, (n,), generator=gen) for n in lengths]
    packed_ids = torch.cat(documents)[None]
    doc_ids = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths))[None]
    with torch.no_grad():
        packed = model(packed_ids, document_ids=doc_ids)[0]
        alone = torch.cat([model(doc[None])[0] for doc in documents])
    assert (packed - alone).abs().max() < 1e-4


FLASH_READY = importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pattern", PATTERN_CASES, ids=lambda p: p.describe().replace(" ", "-"))
def test_flex_equals_reference_on_gpu_forward_and_gradients(pattern: AttentionPattern) -> None:
    _compare_on_gpu("flex", pattern)


@pytest.mark.skipif(not FLASH_READY, reason="needs the flash-attn package and a CUDA device")
@pytest.mark.parametrize("pattern", [p for p in PATTERN_CASES if p.kind in ("dense", "local")])
def test_flash_attn_windows_and_varlen_equal_reference(pattern: AttentionPattern) -> None:
    _compare_on_gpu("flash_attn", pattern)


def _compare_on_gpu(backend: str, pattern: AttentionPattern) -> None:
    for docs in (None, random_documents().cuda()):
        q, k, v = (t.detach().cuda().to(torch.bfloat16).requires_grad_() for t in qkv(length=24, dim=16))
        results = []
        for name in ("reference", backend):
            grads_in = [t.detach().clone().requires_grad_() for t in (q, k, v)]
            out = ATTENTION_BACKENDS[name](pattern)(*grads_in, AttentionContext.for_documents(docs))
            out.float().square().sum().backward()
            results.append((out.float(), [t.grad.float() for t in grads_in]))
        (ref_out, ref_grads), (out, grads) = results
        # bf16 resolution (2^-8 relative), a few roundings deep: 3% of each tensor's largest value.
        for expected, got in zip([ref_out, *ref_grads], [out, *grads], strict=True):
            assert (expected - got).abs().max() <= 3e-2 * expected.abs().max()
