"""Knowledge distillation: the student learns from the labels and from a trained teacher's outputs.

The loss of a micro-batch is, over its scored tokens (Hinton et al., 2015; FitNets for the last term):

    alpha · CE(student, labels) + (1 − alpha) · T² · KL(softmax(teacher / T) ‖ softmax(student / T))
      + hidden_weight · MSE(proj(student hidden), teacher hidden)

written as pre-weighted `LossTerms`, so the training loop, which sums each term's mean, needs nothing
new. `proj` (one `nn.Linear(d_student, d_teacher)` per matched pair of layers) is trained with the
student: it is registered on the student as `kd_projections` before the model is laid out, so the
optimizer, FSDP/DDP and checkpoints take it like any student weight, and it is computed inside the
student's forward (a hook), where FSDP has gathered it. Exports build a fresh model and load only
its own weights from the checkpoint, so the exported student has no projection.

The teacher is loaded by every worker itself (`load_pretrained`), kept in eval mode without
gradients, and run under `torch.no_grad()`. Under FSDP it is sharded over the same data-parallel
mesh as the student (with `parallel.fsdp.apply_fsdp`, resharding after every forward since it never
runs backward); under DDP each rank holds a plain replica (DDP only synchronises gradients, and the
teacher has none). Tensor and pipeline parallelism are refused by the config (`DistillConfig.check`).

Held-out evaluation (the model in eval mode) scores the student with the plain next-token loss, so
a distilled run's `eval_loss` compares with a run without a teacher.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from llmlab.config import ConfigError, ExperimentConfig
from llmlab.model.losses import per_token_cross_entropy
from llmlab.model.pretrained import load_pretrained
from llmlab.parallel import Layout, ParallelConfig
from llmlab.train.distill_config import DistillConfig
from llmlab.train.objectives import Clm, LossTerms, Objective

PROJECTIONS = "kd_projections"  # the student's submodule holding the hidden-state projections
FINAL = -1  # a hidden_layers index meaning "the final norm's input" (the last hidden state)


def kd_token_losses(
    student_BLV: torch.Tensor, teacher_BLV: torch.Tensor, targets_BL: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cross-entropy of the student [B, L], KL(teacher/T ‖ student/T) [B, L], scored mask [B, L]),
    float32, 0 where a target is not scored."""
    ce_BL, scored_BL = per_token_cross_entropy(student_BLV, targets_BL)
    log_student_BLV = F.log_softmax(student_BLV.float() / temperature, dim=-1)
    log_teacher_BLV = F.log_softmax(teacher_BLV.float() / temperature, dim=-1)
    kl_BL = (log_teacher_BLV.exp() * (log_teacher_BLV - log_student_BLV)).sum(-1)
    return ce_BL, kl_BL * scored_BL, scored_BL


def _weighted(alpha: float, temperature: float, ce: torch.Tensor, kl: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
    pairs = [(alpha, ce), ((1 - alpha) * temperature**2, kl)]
    return [(weight, losses) for weight, losses in pairs if weight != 0]


class _Taps:
    """Forward hooks that keep hidden states while `on`: a block's output, or the final norm's input
    (the last hidden state), each passed through `transform` (the student's projection)."""

    def __init__(self, model: nn.Module, layers: list[int], transforms: list[Callable[[torch.Tensor], torch.Tensor]]):
        self.on = False
        self.hidden: list[torch.Tensor | None] = [None] * len(layers)
        for slot, (layer, transform) in enumerate(zip(layers, transforms, strict=True)):
            if layer == FINAL:
                model.norm.register_forward_pre_hook(self._keeper(slot, transform, lambda args, out: args[0]))
            else:
                model.layers[layer].register_forward_hook(self._keeper(slot, transform, lambda args, out: out))

    def _keeper(self, slot: int, transform: Callable, pick: Callable) -> Callable:
        def hook(module: nn.Module, args: tuple, *output: torch.Tensor) -> None:
            if self.on:
                self.hidden[slot] = transform(pick(args, output[0] if output else None))

        return hook

    def take(self) -> list[torch.Tensor]:
        hidden, self.hidden = self.hidden, [None] * len(self.hidden)
        assert all(h is not None for h in hidden), "a hidden state to match was not computed"
        return hidden  # type: ignore[return-value]


class Distillation(Objective):
    """Clm with a teacher: the pre-weighted terms alpha·CE and (1 − alpha)·T²·KL (a term of weight 0
    left out), plus hidden-state matching, each summed per row over its scored tokens."""

    def __init__(self, base: Clm, teacher: nn.Module, config: DistillConfig, student: nn.Module) -> None:
        super().__init__()
        self.base, self.teacher, self.config = base, teacher, config
        self.hidden_taps: tuple[_Taps, _Taps] | None = None
        if config.hidden_weight > 0:
            pairs = config.hidden_layers or [(FINAL, FINAL)]
            projections = nn.ModuleList(
                nn.Linear(student.config.d_model, teacher.config.d_model, bias=False) for _ in pairs
            ).to(next(student.parameters()).device)
            student.add_module(PROJECTIONS, projections)
            self.hidden_taps = (
                _Taps(student, [s for s, _ in pairs], list(projections)),
                _Taps(teacher, [t for _, t in pairs], [lambda h: h] * len(pairs)),
            )
        self._sums = torch.zeros(4)  # unweighted ce, kl and hidden sums, scored tokens, since metrics()

    def terms(self, model: nn.Module, rows_BR: torch.Tensor) -> LossTerms:
        if not model.training:  # held out: the student's own next-token loss, as a run without a teacher
            return self.base.terms(model, rows_BR)
        batch = self.base.row_format.split(rows_BR)
        kwargs = batch.model_kwargs()
        taps = self.hidden_taps or ()
        for tap in taps:
            tap.on = True
        try:
            student_BLV = model(batch.inputs_BL, **kwargs)
            with torch.no_grad():
                teacher_BLV = self.teacher(batch.inputs_BL, **kwargs)
        finally:
            for tap in taps:
                tap.on = False
        alpha, temperature = self.config.alpha, self.config.temperature
        ce_BL, kl_BL, scored_BL = kd_token_losses(student_BLV, teacher_BLV, batch.targets_BL, temperature)
        counts_B = scored_BL.sum(1).float()
        sums = [weight * losses_BL.sum(1) for weight, losses_BL in _weighted(alpha, temperature, ce_BL, kl_BL)]
        hidden_B = torch.zeros_like(counts_B)
        if self.hidden_taps is not None:
            student_taps, teacher_taps = self.hidden_taps
            for projected_BLD, target_BLD in zip(student_taps.take(), teacher_taps.take(), strict=True):
                errors_BL = (projected_BLD.float() - target_BLD.float()).pow(2).mean(-1)
                hidden_B = hidden_B + (errors_BL * scored_BL).sum(1) / len(student_taps.hidden)
            sums.append(self.config.hidden_weight * hidden_B)
        if self._sums.device != counts_B.device:
            self._sums = self._sums.to(counts_B.device)
        self._sums += torch.stack([ce_BL.sum(), kl_BL.sum(), hidden_B.sum(), counts_B.sum()]).detach()
        return LossTerms(torch.stack(sums, 1), counts_B[:, None].expand(-1, len(sums)))

    def scored_tokens(self, rows_BR: torch.Tensor) -> int:
        return self.base.scored_tokens(rows_BR)

    def metrics(self) -> dict[str, float]:
        """Mean unweighted cross-entropy, KL and hidden-state error over the scored tokens of every
        rank's micro-batches since the last call. Collective: every rank calls it."""
        sums = self._sums.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        self._sums.zero_()
        ce, kl, hidden, tokens = (float(x) for x in sums)
        if tokens == 0:
            return {}
        values = {"kd.ce": ce / tokens, "kd.kl": kl / tokens}
        if self.hidden_taps is not None:
            values["kd.hidden"] = hidden / tokens
        return values


def load_teacher(
    config: DistillConfig,
    parallel_config: ParallelConfig,
    layout: Layout,
    device: torch.device,
    tracking_uri: str | None,
) -> nn.Module:
    """The teacher on `device`, frozen and in eval mode; sharded like the student under FSDP."""
    from llmlab.parallel import blocks_of
    from llmlab.parallel.fsdp import apply_fsdp

    assert config.teacher is not None
    teacher = load_pretrained(config.teacher, tracking_uri).model.to(device)
    teacher.eval()
    teacher.requires_grad_(False)
    dims = layout.dims
    if layout.mesh is not None and dims.dp_shard > 1:
        names = ("dp_replicate", "dp_shard") if dims.dp_replicate > 1 else ("dp_shard",)
        apply_fsdp(
            teacher,
            blocks_of(teacher),
            layout.submesh(*names),
            3,
            parallel_config.mixed_precision,
            parallel_config.cpu_offload,
        )
        teacher.set_reshard_after_forward(True)  # the root too: no backward will want its weights
    return teacher


def distil(
    objective: Objective,
    student: nn.Module,
    config: DistillConfig,
    parallel_config: ParallelConfig,
    layout: Layout,
    device: torch.device,
    tracking_uri: str | None,
) -> Objective:
    """`objective` with `config.teacher` teaching `student` (built, not yet laid out: this adds its
    projections). With alpha 1 and no hidden-state term the teacher has no say in the loss: it is not
    loaded, and the run is the student trained from scratch (on the teacher's tokenizer), exactly."""
    if not isinstance(objective, Clm):
        raise ValueError(f"distill.teacher: distils decoders on clm, not {type(objective).__name__}")
    if config.alpha == 1 and config.hidden_weight == 0:
        return objective
    teacher = load_teacher(config, parallel_config, layout, device, tracking_uri)
    if teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError(
            f"distill.teacher: vocabulary of {teacher.config.vocab_size} tokens, the student's "
            f"{student.config.vocab_size}; they must match"
        )
    for _, layer in config.hidden_layers or []:
        if layer >= teacher.config.n_layers:
            raise ValueError(f"distill.hidden_layers: teacher block {layer} does not exist ({teacher.config.n_layers})")
    return Distillation(objective, teacher, config, student)


def resolve_teacher(
    exp: ExperimentConfig, tracking_uri: str, storage: str, say: Callable[[str], None] = print
) -> ExperimentConfig:
    """Check `distill.teacher` on the driver before anything starts, raising a one-line ConfigError:
    it loads, its vocabulary is the student's, its hidden_layers exist. Without data.tokenizer the
    student uses the teacher's tokenizer (written under `storage`, or a temporary folder for remote
    storage): returns the experiment with data.tokenizer set to it."""
    from llmlab.adopt import describe, tokenizer_path
    from llmlab.data.tokenizer import load_tokenizer

    ref = exp.distill.teacher
    assert ref is not None
    if exp.finetune.enabled:
        raise ConfigError("distill.teacher", "does not combine with finetune yet; distil into a model trained whole")
    teacher, teacher_tokenizer = describe(ref, tracking_uri, "distill.teacher")
    path = tokenizer_path(exp.data, teacher_tokenizer, ref, storage, "distill.teacher")
    exp = exp.model_copy(update={"data": exp.data.model_copy(update={"tokenizer": path})})
    try:
        tokenizer = load_tokenizer(exp.data.tokenizer)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError("distill.teacher", f"its tokenizer: {str(err).splitlines()[0]}") from None
    student_vocab = exp.model.vocab_size or tokenizer.get_vocab_size()
    if teacher.vocab_size != student_vocab:
        raise ConfigError(
            "distill.teacher",
            f"{ref} has a vocabulary of {teacher.vocab_size} tokens but the student {student_vocab}; they must "
            f"match (use the teacher's tokenizer, and model.vocab_size={teacher.vocab_size} if its table is padded)",
        )
    for _, layer in exp.distill.hidden_layers or []:
        if layer >= teacher.n_layers:
            raise ConfigError(
                "distill.hidden_layers", f"teacher block {layer} does not exist (the teacher has {teacher.n_layers})"
            )
    say(
        f"distilling from {ref}: d_model {teacher.d_model}, {teacher.n_layers} layers, vocabulary "
        f"{teacher.vocab_size} (alpha {exp.distill.alpha}, temperature {exp.distill.temperature})"
    )
    return exp
