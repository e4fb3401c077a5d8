"""Train on a distilled set in embedding space and score held-out loss (plain torch, no Ray).

The token-level shards are what `llmlab run` trains on. A synthetic set can also be trained on as
it was learned: its input embeddings fed through `inputs_embeds` to a fresh model whose token table
is the distillation's frozen one (so the held-out tokens are embedded in the same space). To
compare with a selection on equal terms, a selection is trained the same way: its tokens embedded
by the same frozen table.

    python -m llmlab.data.distill.embedding_eval SYNTHETIC_DIR OTHER_DIR... --source MANIFEST \
        --experiment EXP.yaml [overrides]

trains one model per folder with the experiment's model and train settings (steps, batch, lr,
warmup, seed) and prints each one's held-out loss.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from llmlab.config import load_experiment
from llmlab.data.distill.output import load_synthetic
from llmlab.data.distill.scores import sequence_losses
from llmlab.data.sampler import GlobalBatchSampler
from llmlab.data.shards import Manifest, TokenShards, join
from llmlab.model import ModelConfig, Transformer, build_model
from llmlab.model.losses import mean_token_loss
from llmlab.train.config import TrainConfig
from llmlab.train.optim import build_optimizer, build_scheduler


def train_on_embeddings(
    model_cfg: ModelConfig,
    vocab_size: int,
    table_VD: torch.Tensor,
    inputs_KLD: torch.Tensor,
    labels_KL: torch.Tensor,
    cfg: TrainConfig,
) -> Transformer:
    """A fresh `cfg.seed` model with `table_VD` as its frozen token table (and tied head), trained
    `cfg.max_steps` AdamW steps on batches of (inputs_embeds, labels) drawn as training draws rows."""
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg, vocab_size=vocab_size)
    with torch.no_grad():
        model.embed_tokens.weight.copy_(table_VD)
    model.embed_tokens.weight.requires_grad_(False)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    sampler = GlobalBatchSampler(inputs_KLD.shape[0], cfg.batch_size, cfg.seed)
    model.train()
    for step in range(cfg.max_steps):
        index = torch.from_numpy(sampler.global_indices(step))
        loss = mean_token_loss(model(inputs_embeds=inputs_KLD[index]), labels_KL[index])
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return model.eval()


def heldout_rows(source_manifest_uri: str, max_sequences: int) -> torch.Tensor:
    """The first `max_sequences` held-out rows of every domain of the training shards' build."""
    base = source_manifest_uri.rsplit("/", 1)[0]
    parts = []
    for folder in Manifest.load(source_manifest_uri).heldout.values():
        shards = TokenShards(join(base, folder))
        parts.append(torch.from_numpy(shards.get(np.arange(min(len(shards), max_sequences)))))
    return torch.cat(parts)


def set_as_embeddings(folder: str, table_VD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_embeds, labels) of a distilled folder: a synthetic set's own tensors, or a selection's
    token rows embedded by `table_VD`."""
    try:
        tensors = load_synthetic(folder)
        return tensors["inputs_embeds"], tensors["labels"]
    except FileNotFoundError:
        shards = TokenShards(folder)
        rows = torch.from_numpy(shards.get(np.arange(len(shards))))
        return table_VD[rows[:, :-1]], rows[:, 1:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("synthetic", help="a synthetic set's folder: its frozen table is used for every set")
    parser.add_argument("others", nargs="*", help="further distilled folders (selections or synthetic sets)")
    parser.add_argument("--source", required=True, help="manifest.json of the training shards (for held-out rows)")
    parser.add_argument("--experiment", required=True, help="experiment YAML: model and train settings")
    parser.add_argument("--overrides", nargs="*", default=[])
    args = parser.parse_args(argv)
    exp = load_experiment(args.experiment, args.overrides)
    table_VD = load_synthetic(args.synthetic)["embedding"]
    heldout = heldout_rows(args.source, exp.train.eval_sequences)
    for folder in [args.synthetic, *args.others]:
        inputs, labels = set_as_embeddings(folder, table_VD)
        model = train_on_embeddings(exp.model, table_VD.shape[0], table_VD, inputs, labels, exp.train)
        loss = float(sequence_losses(model, heldout, batch_size=64).mean())
        print(f"{folder}: {inputs.shape[0]} sequences, held-out loss {loss:.4f} (embedding route, frozen table)")


if __name__ == "__main__":
    main()
