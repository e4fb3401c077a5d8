"""True dataset distillation: k synthetic sequences learned in embedding space on our transformer.

Plain torch (no Ray). The synthetic set is a tensor of input embeddings [k, L, D] with hard
next-token labels [k, L]. Both start from k real sequences drawn with the seed (their token
embeddings and their own next tokens); the labels stay fixed and the embeddings move so that
the set matches the real data:

- distribution matching (Zhao & Bilen 2023): under a freshly initialised network each iteration,
  the mean final hidden state at every position over the synthetic set should equal that over a
  real batch (positions play the part of an image's spatial axis; the labels are not used).
- gradient matching (Zhao et al. 2021): under a freshly initialised network, the gradient of the
  next-token loss on the synthetic set should point as the gradient on a real batch does (layer-wise
  cosine distance, per output unit); the network then takes a few SGD steps on the synthetic set
  and the matching repeats (the paper's inner loop). With soft labels (`label_logits_KLV`, each
  position's target distribution as logits, e.g. a reference model's), the labels are learned by the
  same matching, as Bohdal et al. 2020 and Sucholutsky & Schonlau 2021 learn them.

The input space must not change between iterations, so every network shares one frozen token
embedding table (the caller's, e.g. a briefly trained reference model's): only the blocks are
re-initialised. The same table maps each synthetic embedding to its nearest token, which gives
a token-level version of the set that an unchanged model trains on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from llmlab.data.distill.scores import random_selection
from llmlab.model import ModelConfig, Transformer, build_model


@dataclass
class SyntheticSet:
    inputs_embeds_KLD: torch.Tensor  # learned input embeddings
    labels_KL: torch.Tensor  # hard next-token labels (int64), fixed from the initial real rows
    init_indices: np.ndarray  # the real sequences (pool rows) they started from
    history: list[float] = field(default_factory=list)  # matching objective per iteration
    label_logits_KLV: torch.Tensor | None = None  # soft labels as logits (learned by gradient matching)


def network_seed(seed: int, iteration: int) -> int:
    """The seed of iteration `iteration`'s random network (also used by `matching_objective`)."""
    return seed * 100_003 + iteration


def matching_network(model_cfg: ModelConfig, vocab_size: int, embedding_VD: torch.Tensor, seed: int) -> Transformer:
    """A fresh `seed` initialisation of the model with `embedding_VD` as its frozen token table.
    Gradient matching differentiates through a gradient: the reference attention backend does
    plain autograd ops, which every backend does not."""
    cfg = model_cfg.model_copy(update={"attention": model_cfg.attention.model_copy(update={"backend": "reference"})})
    torch.manual_seed(seed)
    net = build_model(cfg, vocab_size=vocab_size)
    with torch.no_grad():
        net.embed_tokens.weight.copy_(embedding_VD)
    net.embed_tokens.weight.requires_grad_(False)  # a tied head is the same tensor: frozen too
    return net.train()


def final_hidden(net: Transformer, *, input_ids=None, inputs_embeds=None) -> torch.Tensor:
    """The final-norm output [B, L, D]: the features the output head reads."""
    captured: list[torch.Tensor] = []
    handle = net.norm.register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        net(input_ids=input_ids, inputs_embeds=inputs_embeds)
    finally:
        handle.remove()
    return captured[0]


def distribution_loss(net: Transformer, synthetic_KLD: torch.Tensor, real_BR: torch.Tensor) -> torch.Tensor:
    """Squared distance between the mean feature at each position of the real and synthetic
    sequences, summed over features and averaged over positions."""
    with torch.no_grad():
        real_LD = final_hidden(net, input_ids=real_BR[:, :-1]).float().mean(0)
    syn_LD = final_hidden(net, inputs_embeds=synthetic_KLD).float().mean(0)
    return ((real_LD - syn_LD) ** 2).sum(-1).mean()


def _clm_loss(
    logits_BLV: torch.Tensor, labels_BL: torch.Tensor, label_logits_BLV: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean next-token cross-entropy against the hard labels, or against softmax(label_logits)."""
    if label_logits_BLV is None:
        return F.cross_entropy(logits_BLV.float().flatten(0, 1), labels_BL.flatten())
    return -(F.softmax(label_logits_BLV, -1) * F.log_softmax(logits_BLV.float(), -1)).sum(-1).mean()


def _layer_distance(real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
    """Zhao et al.'s distance of one layer's gradients: 1 - cosine per output unit, summed."""
    if real.dim() == 1:  # a norm's gain or a bias: one unit
        real, syn = real.unsqueeze(0), syn.unsqueeze(0)
    real, syn = real.flatten(1), syn.flatten(1)
    return (1 - F.cosine_similarity(real, syn, dim=1, eps=1e-8)).sum()


def gradient_loss(
    net: Transformer,
    synthetic_KLD: torch.Tensor,
    labels_KL: torch.Tensor,
    real_BR: torch.Tensor,
    label_logits_KLV: torch.Tensor | None = None,
) -> torch.Tensor:
    """Layer-wise gradient distance of the next-token loss on a real batch vs the synthetic set,
    differentiable in the synthetic embeddings (and soft labels, when given)."""
    params = [p for p in net.parameters() if p.requires_grad]
    real_loss = _clm_loss(net(real_BR[:, :-1]), real_BR[:, 1:])
    real_grads = [g.detach() for g in torch.autograd.grad(real_loss, params)]
    syn_loss = _clm_loss(net(inputs_embeds=synthetic_KLD), labels_KL, label_logits_KLV)
    syn_grads = torch.autograd.grad(syn_loss, params, create_graph=True)
    return sum(_layer_distance(r, s) for r, s in zip(real_grads, syn_grads, strict=True))


def _sgd_step(
    net: Transformer, synthetic_KLD: torch.Tensor, labels_KL: torch.Tensor, lr: float, label_logits_KLV=None
) -> None:
    params = [p for p in net.parameters() if p.requires_grad]
    soft = None if label_logits_KLV is None else label_logits_KLV.detach()
    loss = _clm_loss(net(inputs_embeds=synthetic_KLD.detach()), labels_KL, soft)
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for param, grad in zip(params, grads, strict=True):
            param -= lr * grad


def _real_batch(rows_NR: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    return rows_NR[torch.randint(rows_NR.shape[0], (size,), generator=generator)]


def initial_set(rows_NR: torch.Tensor, embedding_VD: torch.Tensor, k: int, seed: int) -> SyntheticSet:
    """k real rows drawn with `seed`: their token embeddings and their next tokens as labels."""
    init = random_selection(rows_NR.shape[0], k, seed)
    init_rows = rows_NR[torch.from_numpy(init)]
    return SyntheticSet(embedding_VD[init_rows[:, :-1]].clone(), init_rows[:, 1:].clone(), init)


def learn_synthetic(
    method: str,
    rows_NR: torch.Tensor,
    embedding_VD: torch.Tensor,
    model_cfg: ModelConfig,
    vocab_size: int,
    *,
    k: int,
    steps: int,
    lr: float,
    real_batch: int,
    inner_steps: int = 1,
    inner_lr: float = 0.01,
    seed: int = 0,
    label_logits_KLV: torch.Tensor | None = None,
    label_lr: float = 0.05,
) -> SyntheticSet:
    """k synthetic sequences matched to the real rows `rows_NR` by `method` (distribution or gradient).
    `label_logits_KLV` (soft labels of the initial set, as logits) are learned too by gradient
    matching, with Adam at `label_lr`; distribution matching does not read labels."""
    if method not in ("distribution", "gradient"):
        raise ValueError(f"method must be distribution or gradient (got {method!r})")
    start = initial_set(rows_NR, embedding_VD, k, seed)
    synthetic = start.inputs_embeds_KLD.requires_grad_(True)
    labels = start.labels_KL
    groups = [{"params": [synthetic], "lr": lr}]
    soft = None
    if label_logits_KLV is not None and method == "gradient":
        soft = label_logits_KLV.detach().clone().float().requires_grad_(True)
        groups.append({"params": [soft], "lr": label_lr})
    optimizer = torch.optim.Adam(groups)
    generator = torch.Generator().manual_seed(seed)
    result = SyntheticSet(synthetic, labels, start.init_indices)
    for iteration in range(steps):
        net = matching_network(model_cfg, vocab_size, embedding_VD, network_seed(seed, iteration))
        losses = []
        for _ in range(1 if method == "distribution" else inner_steps):
            real = _real_batch(rows_NR, real_batch, generator)
            if method == "distribution":
                loss = distribution_loss(net, synthetic, real)
            else:
                loss = gradient_loss(net, synthetic, labels, real, soft)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if method == "gradient":
                _sgd_step(net, synthetic, labels, inner_lr, soft)
        result.history.append(float(np.mean(losses)))
    result.inputs_embeds_KLD = synthetic.detach()
    result.label_logits_KLV = None if soft is None else soft.detach()
    return result


def matching_objective(
    method: str,
    synthetic_KLD: torch.Tensor,
    labels_KL: torch.Tensor,
    rows_NR: torch.Tensor,
    embedding_VD: torch.Tensor,
    model_cfg: ModelConfig,
    vocab_size: int,
    *,
    networks: int,
    real_batch: int,
    seed: int = 0,
    label_logits_KLV: torch.Tensor | None = None,
) -> float:
    """The matching objective of a synthetic set averaged over `networks` fixed random networks and
    real batches (the same for any set: to compare a set before and after learning)."""
    generator = torch.Generator().manual_seed(seed + 1)
    total = 0.0
    for index in range(networks):
        net = matching_network(model_cfg, vocab_size, embedding_VD, network_seed(seed + 1, index))
        real = _real_batch(rows_NR, real_batch, generator)
        synthetic = synthetic_KLD.detach().requires_grad_(method == "gradient")
        if method == "distribution":
            total += float(distribution_loss(net, synthetic, real).detach())
        else:
            total += float(gradient_loss(net, synthetic, labels_KL, real, label_logits_KLV).detach())
    return total / networks


def nearest_tokens(inputs_embeds_KLD: torch.Tensor, embedding_VD: torch.Tensor) -> torch.Tensor:
    """The id [k, L] of the token embedding nearest (L2) to each synthetic embedding; ties: lowest id."""
    flat_ND = inputs_embeds_KLD.reshape(-1, inputs_embeds_KLD.shape[-1]).float()
    table_VD = embedding_VD.float()
    # |x - e|^2 = |x|^2 - 2 x.e + |e|^2; |x|^2 is the same for every token.
    distance_NV = table_VD.pow(2).sum(1) - 2 * flat_ND @ table_VD.T
    return distance_NV.argmin(1).view(inputs_embeds_KLD.shape[:-1])


def token_rows(synthetic: SyntheticSet, embedding_VD: torch.Tensor) -> torch.Tensor:
    """clm rows [k, L+1] of the token-level version: the nearest tokens of the inputs, then the last
    label (a clm row's targets are its own next tokens, so only the last label survives as such)."""
    tokens_KL = nearest_tokens(synthetic.inputs_embeds_KLD, embedding_VD)
    return torch.cat([tokens_KL, synthetic.labels_KL[:, -1:]], dim=1)
