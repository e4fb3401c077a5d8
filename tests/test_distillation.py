"""Knowledge distillation: the loss against a by-hand computation, the frozen teacher, the
projection's place (trained and checkpointed, not exported), parity of FSDP and DDP with one
process, and `llmlab run` with a teacher end to end (and refusing a teacher of another vocabulary)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from distill_cases import STUDENT, TRAIN, VOCAB, global_rows, save_teacher, train_kd, train_kd_layouts
from mlflow.tracking import MlflowClient
from tokenizers import Tokenizer
from torch import nn

from llmlab import parallel
from llmlab.config import ConfigError, validate_experiment
from llmlab.conventions import IGNORE_INDEX
from llmlab.model import ModelConfig, build_model
from llmlab.parallel import MeshDims, ParallelConfig
from llmlab.parallel.spawn import spawn
from llmlab.train.config import TrainConfig
from llmlab.train.distill_config import DistillConfig
from llmlab.train.distillation import PROJECTIONS, Distillation, distil
from llmlab.train.objectives import Clm
from llmlab.train.optim import build_optimizer, build_scheduler

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ the loss


def _brute_force(student, teacher, targets, alpha: float, temperature: float) -> float:
    """alpha·mean CE + (1 − alpha)·T²·mean KL over the scored tokens, one token at a time."""
    ce_total = kl_total = 0.0
    scored = 0
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            label = int(targets[b, t])
            if label == IGNORE_INDEX:
                continue
            s, q = student[b, t].double().tolist(), teacher[b, t].double().tolist()
            ce_total += math.log(sum(math.exp(x) for x in s)) - s[label]
            p_s = [math.exp(x / temperature) for x in s]
            p_t = [math.exp(x / temperature) for x in q]
            p_s = [x / sum(p_s) for x in p_s]
            p_t = [x / sum(p_t) for x in p_t]
            kl_total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
            scored += 1
    return alpha * ce_total / scored + (1 - alpha) * temperature**2 * kl_total / scored


class _Logits(nn.Module):
    """A stand-in model whose output is the given logits [B, L, V], whatever its inputs."""

    def __init__(self, logits_BLV: torch.Tensor) -> None:
        super().__init__()
        self.logits_BLV = logits_BLV

    def forward(self, inputs_BL: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        return self.logits_BLV


def _kd_loss(student, teacher, targets, alpha: float, temperature: float) -> torch.Tensor:
    """`Distillation.terms`' loss for a student and a teacher with these logits, on rows whose
    targets (rows[:, 1:]) are `targets`."""
    rows = torch.cat([torch.zeros_like(targets[:, :1]), targets], 1)
    model = _Logits(student)
    config = DistillConfig(teacher="runs:/teacher/model", alpha=alpha, temperature=temperature)
    return Distillation(Clm(), _Logits(teacher), config, model).terms(model, rows).loss()


@pytest.mark.parametrize(("alpha", "temperature"), [(0.5, 2.0), (0.3, 1.0), (0.0, 4.0), (0.9, 0.5)])
def test_loss_is_the_formula_over_scored_tokens(alpha: float, temperature: float) -> None:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, 11, generator=generator) * 3
    teacher = torch.randn(3, 5, 11, generator=generator) * 3
    targets = torch.randint(0, 11, (3, 5), generator=generator)
    targets[0, :2] = IGNORE_INDEX
    targets[2, 4] = IGNORE_INDEX
    loss = _kd_loss(student, teacher, targets, alpha, temperature)
    assert float(loss) == pytest.approx(_brute_force(student, teacher, targets, alpha, temperature), abs=1e-5)


def test_alpha_one_is_plain_cross_entropy_and_equal_logits_have_no_kl() -> None:
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 6, 9, generator=generator), torch.randn(2, 6, 9, generator=generator)
    targets = torch.randint(0, 9, (2, 6), generator=generator)
    targets[1, 3:] = IGNORE_INDEX
    plain = F.cross_entropy(student.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    assert torch.allclose(_kd_loss(student, teacher, targets, 1.0, 2.0), plain, atol=1e-6)
    assert float(_kd_loss(student, student.clone(), targets, 0.0, 3.0)) == pytest.approx(0, abs=1e-6)


def test_alpha_one_without_hidden_term_trains_the_student_alone(tmp_path: Path) -> None:
    """The baseline of the ablation: the teacher has no say, so it is not even loaded (none exists here)."""
    student = build_model(ModelConfig(**STUDENT), vocab_size=VOCAB)
    layout, cpu = parallel.build_layout(MeshDims(), torch.device("cpu")), torch.device("cpu")
    config = DistillConfig(teacher=str(tmp_path / "nowhere"), alpha=1.0)
    base = Clm()
    assert distil(base, student, config, ParallelConfig(), layout, cpu, None) is base
    assert not hasattr(student, PROJECTIONS)


def test_hidden_term_is_the_projected_mse(tmp_path: Path) -> None:
    """alpha·CE + (1−alpha)·T²·KL + w·MSE(proj(student block 0), teacher block 1), by hand from hooks of our own."""
    teacher_folder = save_teacher(tmp_path / "teacher")
    torch.manual_seed(0)
    student = build_model(ModelConfig(**STUDENT), vocab_size=VOCAB)
    config = DistillConfig(teacher=str(teacher_folder), alpha=0.4, hidden_weight=0.7, hidden_layers=[(0, 1)])
    layout = parallel.build_layout(MeshDims(), torch.device("cpu"))
    objective = distil(Clm(), student, config, ParallelConfig(), layout, torch.device("cpu"), None)
    seen: dict[str, torch.Tensor] = {}
    student.layers[0].register_forward_hook(lambda m, a, out: seen.__setitem__("student", out))
    objective.teacher.layers[1].register_forward_hook(lambda m, a, out: seen.__setitem__("teacher", out))
    rows = global_rows(0)
    student.train()
    loss = objective.terms(student, rows).loss()

    inputs, targets = rows[:, :-1], rows[:, 1:]
    with torch.no_grad():
        teacher_logits = objective.teacher(inputs)
    expected = _kd_loss(student(inputs), teacher_logits, targets, 0.4, 2.0)
    projected = getattr(student, PROJECTIONS)[0](seen["student"])
    expected = expected + 0.7 * (projected - seen["teacher"]).pow(2).mean()
    assert torch.allclose(loss, expected, atol=1e-5)
    student.eval()  # held out: the plain next-token loss
    assert torch.allclose(objective.terms(student, rows).loss(), Clm().terms(student, rows).loss())


# ------------------------------------------------------------------------------ teacher and student


def test_teacher_stays_frozen_in_eval_mode_while_the_student_learns(tmp_path: Path) -> None:
    save_teacher(tmp_path / "teacher")
    result = train_kd({}, {"teacher": str(tmp_path / "teacher"), "hidden_weight": 0.5})
    assert result["teacher_unchanged"] and result["teacher_eval"] and result["teacher_grads"] == []
    assert result["loss"][-1] < result["loss"][0] and result["kl"][-1] < result["kl"][0], result


def test_projection_is_trained_and_checkpointed_but_not_exported(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from llmlab.data import train_tokenizer
    from llmlab.train.checkpoint import load_checkpoint, save_checkpoint
    from llmlab.train.export import export_hf
    from llmlab.train.loop import train

    save_teacher(tmp_path / "teacher")
    config = DistillConfig(teacher=str(tmp_path / "teacher"), hidden_weight=1.0)
    layout, cpu = parallel.build_layout(MeshDims(), torch.device("cpu")), torch.device("cpu")

    def student_and_objective():
        torch.manual_seed(0)
        student = build_model(ModelConfig(**STUDENT), vocab_size=VOCAB)
        return student, distil(Clm(), student, config, ParallelConfig(), layout, cpu, None)

    student, objective = student_and_objective()
    cfg = TrainConfig(**{**TRAIN, "max_steps": 3})
    optimizer = build_optimizer(student, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    initial = getattr(student, PROJECTIONS)[0].weight.detach().clone()
    train(student, optimizer, scheduler, lambda i: [global_rows(i)], cfg, device=cpu, objective=objective)
    trained = getattr(student, PROJECTIONS)[0].weight.detach().clone()
    assert not torch.equal(initial, trained)  # the optimizer has the projection

    save_checkpoint(tmp_path / "ckpt", model=student, optimizer=optimizer, scheduler=scheduler, step=3)
    resumed, _ = student_and_objective()
    optimizer2 = build_optimizer(resumed, cfg)
    assert load_checkpoint(tmp_path / "ckpt", model=resumed, optimizer=optimizer2) == 3
    assert torch.equal(getattr(resumed, PROJECTIONS)[0].weight, trained)

    tokenizer = train_tokenizer(iter(["a small corpus for a tokenizer"] * 20), 300)
    out = export_hf(ModelConfig(**STUDENT), VOCAB, tmp_path / "ckpt", tokenizer, tmp_path / "export")
    exported = load_file(out / "model.safetensors")
    assert exported and not [key for key in exported if PROJECTIONS in key]
    (embedding,) = [key for key in exported if key.endswith("embed_tokens.weight")]
    assert torch.equal(exported[embedding], student.embed_tokens.weight.detach())  # the trained student


def test_fsdp_distils_like_one_process(tmp_path: Path) -> None:
    """The teacher sharded like the student under FSDP (ZeRO-3): the same losses as in one process.
    (DDP, with a replica of the teacher on each worker, runs in test_llmlab_run_distils_on_ray_train.)"""
    save_teacher(tmp_path / "teacher")
    distill = {"teacher": str(tmp_path / "teacher"), "hidden_weight": 0.5, "hidden_layers": [[1, 2]]}
    reference = train_kd({}, distill)
    ranks = spawn(train_kd_layouts, 2, [({"strategy": "zero3"}, distill)])
    for result in ranks[0]:
        assert result["loss"] == pytest.approx(reference["loss"], abs=1e-5)
        assert result["kl"] == pytest.approx(reference["kl"], abs=1e-5)
        assert result["teacher_unchanged"] and result["teacher_eval"] and result["teacher_grads"] == []


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("raw", "path", "message"),
    [
        ({"distill": {"teacher": "t", "hidden_layers": [[0, 1]]}}, "distill.hidden_layers", "needs hidden_weight > 0"),
        ({"distill": {"hidden_layers": [[0, 1]]}}, "distill.hidden_layers", "applies to knowledge distillation"),
        ({"distill": {"alpha": 1.5}}, "distill.alpha", "less than or equal to 1"),
        ({"distill": {"temperature": 0}}, "distill.temperature", "greater than 0"),
        ({"distill": {"teacher": "t", "hidden_weight": 1, "hidden_layers": [[5, 0]]}}, "distill.hidden_layers", "5"),
        ({"distill": {"teacher": "t"}, "objective": {"type": ["mlm"]}}, "distill.teacher", "clm"),
        (
            {"distill": {"teacher": "t"}, "parallel": {"strategy": "tp"}, "train": {"num_workers": 2}},
            "distill.teacher",
            "tp=2",
        ),
        ({"distill": {"tau": 1}}, "distill.tau", "valid keys: alpha, hidden_layers"),
    ],
)
def test_distill_options_are_checked(raw: dict, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_experiment(raw)
    assert err.value.path == path and message in err.value.problem, str(err.value)


def test_a_teacher_does_not_combine_with_finetuning(tmp_path: Path) -> None:
    from llmlab.train.distillation import resolve_teacher

    exp = validate_experiment({"distill": {"teacher": "t"}, "finetune": {"base": "b"}})
    with pytest.raises(ConfigError, match="does not combine with finetune"):
        resolve_teacher(exp, f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path))


def test_a_local_teacher_is_made_absolute() -> None:
    exp = validate_experiment({"distill": {"teacher": "teachers/small"}})
    assert exp.distill.teacher == str(Path("teachers/small").resolve())
    assert validate_experiment({"distill": {"teacher": "runs:/abc/model"}}).distill.teacher == "runs:/abc/model"


# ------------------------------------------------------------------------------ llmlab run


def _teacher_with_tokenizer(folder: Path, padded_by: int = 0) -> Path:
    from llmlab.data import train_tokenizer

    words = ["def", "class", "return", "import", "the", "model", "of", "data", "value", "list"]
    texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(200)]
    tokenizer = train_tokenizer(iter(texts), 300)
    save_teacher(folder, vocab_size=tokenizer.get_vocab_size() + padded_by, max_seq_len=64)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def _kd_experiment(folder: Path, teacher: Path) -> Path:
    path = folder / "kd.yaml"
    path.write_text(
        f"""
data: {{seq_len: 32, demo_docs_per_domain: 60}}
model: {{d_model: 32, n_layers: 2, n_heads: 2, dropout: 0.0}}
train: {{num_workers: 2, max_steps: 10, batch_size: 8, lr: 0.003, warmup_steps: 3,
         log_every: 5, checkpoint_every: 10, eval_every: 5}}
distill: {{teacher: {teacher}, alpha: 0.5, temperature: 2.0, hidden_weight: 0.5}}
tracking: {{experiment: kd, run_name: kd, system_metrics: false}}
"""
    )
    return path


@pytest.mark.ray
@pytest.mark.e2e
def test_llmlab_run_distils_on_ray_train(llmlab_cli, tmp_path: Path) -> None:
    teacher = _teacher_with_tokenizer(tmp_path / "teacher")
    result = llmlab_cli("run", str(_kd_experiment(tmp_path, teacher)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"distilling from {teacher}" in result.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("kd").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["distill.teacher"] == str(teacher)
    adopted = Tokenizer.from_file(run.data.params["data.tokenizer"]).to_str()
    assert adopted == Tokenizer.from_file(str(teacher / "tokenizer.json")).to_str()  # the teacher's tokenizer
    ce = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "kd.ce"), key=lambda m: m.step)]
    kl = client.get_metric_history(run.info.run_id, "kd.kl")
    assert len(ce) == 10 and len(kl) == 10 and ce[-1] < ce[0], ce
    assert len(client.get_metric_history(run.info.run_id, "eval_loss")) == 2
    folder = client.download_artifacts(run.info.run_id, "model", str(tmp_path / "download"))
    from safetensors.torch import load_file

    assert not [key for key in load_file(Path(folder) / "model.safetensors") if PROJECTIONS in key]


def test_a_teacher_of_another_vocabulary_is_one_line_before_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`llmlab run` in this process (a subprocess would spend its time importing): exit 2, one line."""
    from llmlab.cli import main

    teacher = _teacher_with_tokenizer(tmp_path / "teacher", padded_by=8)
    experiment = _kd_experiment(tmp_path, teacher)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()  # the teacher's saving progress
    started = time.monotonic()
    assert main(["run", str(experiment)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: distill.teacher: "), lines
    size = int(lines[0].split("vocabulary of ")[1].split()[0])
    assert f"has a vocabulary of {size} tokens but the student {size - 8}" in lines[0]
    assert time.monotonic() - started < 30
    assert not (tmp_path / "mlflow.db").exists() or not MlflowClient(
        f"sqlite:///{tmp_path / 'mlflow.db'}"
    ).get_experiment_by_name("kd")
