"""Pipeline parallelism: consecutive groups of decoder layers on different ranks, fed microbatches.

Each stage is a module holding the original model's own submodules under their original names
(`embed_tokens`, `layers.<i>`, `norm`, `lm_head`), so a stage's state dict is a slice of the
model's and checkpoints load into any layout. `torch.distributed.pipelining` moves activations
between stages and runs the schedule (GPipe, 1F1B, interleaved 1F1B with several stages a rank).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.distributed import ProcessGroup
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

from llmlab.model.layers import compute_dtype, rope_cos_sin
from llmlab.model.masks import AttentionContext
from llmlab.model.transformer import Transformer, add_positions, embed

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B, "interleaved_1f1b": ScheduleInterleaved1F1B}

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DecoderStage(nn.Module):
    """Layers `layer_ids` of a decoder, with the embeddings when `first` and the head when `last`.

    A first stage takes token ids [B, L]; the others take the previous stage's hidden states
    [B, L', D] (L' = L / sequence_shards under sequence-parallel tensor parallelism). The last
    returns logits, the others hidden states. Rows are packed end to end (no document ids).
    """

    def __init__(self, model: Transformer, layer_ids: Sequence[int], first: bool, last: bool) -> None:
        super().__init__()
        self.config = model.config
        self.embed_tokens = model.embed_tokens if first else None
        self.embed_positions = model.embed_positions if first else None
        self.dropout = model.dropout
        # A ModuleDict keyed by the layer's index keeps the names `layers.<i>.…` of the full model.
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in layer_ids})
        self.norm = model.norm if last else None
        self.lm_head = model.lm_head if last else None
        self.sequence_shards = 1  # tensor parallelism with sequence parallelism splits L across ranks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed_tokens is not None:
            x = embed(self, x, None)
            x, rope = add_positions(self, x, None)
            x = self.dropout(x)
        else:
            # RoPE angles are recomputed from positions (cheap) instead of sent between stages.
            length = x.shape[1] * self.sequence_shards
            positions = torch.arange(length, device=x.device).unsqueeze(0)
            rope = (
                rope_cos_sin(positions, self.config.rotary_dim, self.config.rope_theta, compute_dtype(x))
                if self.config.position == "rope"
                else None
            )
        context = AttentionContext.for_documents(None)
        for layer in self.layers.values():
            x = layer(x, rope, context)
        if self.lm_head is not None:
            x = self.lm_head(self.norm(x))
        return x


def stage_ids(pp_rank: int, pp_size: int, stages_per_rank: int) -> list[int]:
    """The stages rank `pp_rank` holds: one, or (interleaved) every pp_size-th, as the schedules expect."""
    return [pp_rank + k * pp_size for k in range(stages_per_rank)]


def split_stages(
    model: Transformer, stage_layers: Sequence[range], ids: Sequence[int]
) -> tuple[list[DecoderStage], DecoderStage]:
    """(this rank's stage modules, one module holding all of them under the model's names)."""
    last = len(stage_layers) - 1
    stages = [DecoderStage(model, stage_layers[s], first=s == 0, last=s == last) for s in ids]
    union = [i for s in ids for i in stage_layers[s]]
    return stages, DecoderStage(model, union, first=0 in ids, last=last in ids)


class Pipeline:
    """One optimizer step's forward and backward over this rank's stages."""

    def __init__(
        self,
        stage_modules: Sequence[nn.Module],
        ids: Sequence[int],
        num_stages: int,
        schedule: str,
        microbatches: int,
        loss_fn: LossFn,
        device: torch.device,
        group: ProcessGroup | None,
    ) -> None:
        self.has_first = 0 in ids
        self.has_last = num_stages - 1 in ids
        stages = [
            PipelineStage(module, stage, num_stages, device, group=group)
            for module, stage in zip(stage_modules, ids, strict=True)
        ]
        schedule_class = SCHEDULES[schedule]
        single = schedule_class is not ScheduleInterleaved1F1B
        # scale_grads: gradients are the mean over microbatches, as one batch's mean loss gives.
        self.schedule = schedule_class(
            stages[0] if single else stages, n_microbatches=microbatches, loss_fn=loss_fn, scale_grads=True
        )

    def step(self, inputs_BL: torch.Tensor, targets_BL: torch.Tensor) -> torch.Tensor:
        """Forward and backward of one batch; the mean microbatch loss on the last stage's rank, else 0."""
        return self._run(self.schedule.step, inputs_BL, targets_BL)

    @torch.no_grad()
    def evaluate(self, inputs_BL: torch.Tensor, targets_BL: torch.Tensor) -> torch.Tensor:
        """Forward only; the mean microbatch loss on the last stage's rank, else 0."""
        return self._run(self.schedule.eval, inputs_BL, targets_BL)

    def _run(
        self, schedule_call: Callable[..., object], inputs_BL: torch.Tensor, targets_BL: torch.Tensor
    ) -> torch.Tensor:
        # The first stage's rank feeds the inputs; the last stage's rank scores against the targets.
        args = (inputs_BL,) if self.has_first else ()
        if not self.has_last:
            schedule_call(*args)
            return torch.zeros((), device=inputs_BL.device)
        losses: list[torch.Tensor] = []
        schedule_call(*args, target=targets_BL, losses=losses)
        return torch.stack([loss.detach().float() for loss in losses]).mean()
