"""Byte-level BPE tokenizer (Hugging Face `tokenizers`), trained on the corpus or loaded.

Byte level means every string is encodable with no unknown token and decodes back exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llmlab.conventions import TOKENIZER_FILE

EOS_TOKEN = "<|endoftext|>"  # separates documents in packed sequences; also end of generation
PAD_TOKEN = "<pad>"
MASK_TOKEN = "<mask>"  # unused by causal LMs; reserved so MLM work can reuse the same vocab
# Order fixes the ids: EOS is 0, PAD 1, MASK 2.
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, MASK_TOKEN)
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def _byte_level(tok: Tokenizer) -> Tokenizer:
    # add_prefix_space=False: a leading space would break decode(encode(x)) == x.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE with `vocab_size` entries (fewer if the corpus runs out of merges)."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the 256 byte tokens and "
            f"{len(SPECIAL_TOKENS)} special tokens alone need {MIN_VOCAB_SIZE}"
        )
    tok = _byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 bytes up front, so bytes the training sample never saw are still encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer.json saved by `Tokenizer.save` that has our special tokens."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {p}")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise ValueError(f"cannot load tokenizer {p}: {e}") from e
    if tok.token_to_id(EOS_TOKEN) is None:
        raise ValueError(f"tokenizer {p} has no {EOS_TOKEN} token, which packing needs")
    return tok


def eos_id(tok: Tokenizer) -> int:
    """Id of the document separator."""
    token_id = tok.token_to_id(EOS_TOKEN)
    if token_id is None:
        raise ValueError(f"tokenizer has no {EOS_TOKEN} token")
    return token_id


def pad_id(tok: Tokenizer) -> int:
    token_id = tok.token_to_id(PAD_TOKEN)
    if token_id is None:
        raise ValueError(f"tokenizer has no {PAD_TOKEN} token")
    return token_id


def store_tokenizer(tok: Tokenizer, storage: str) -> str:
    """A local path holding `tok` (under `storage`, or a temporary folder when storage is remote),
    named by its content: for `data.tokenizer` when a run adopts a trained model's tokenizer."""
    import hashlib
    import tempfile

    text = tok.to_str()
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    root = Path(storage) if "://" not in storage else Path(tempfile.gettempdir()) / "llmlab"
    path = root / "_tokenizers" / digest / TOKENIZER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)
