"""Distillation (phase3_production/distill.py): the teacher only teaches, and the whole experiment runs end to end.

The loss itself is exercise p3-onnx.5 (its checks are in tests/exercises/);
here: the trainer asks a frozen teacher about the very images the student
sees and never changes it, and a quick run writes the table of six variants
(teacher, student, student distilled; fp32 and INT8), measured, not copied.
"""

from __future__ import annotations

import json

import pytest
import torch

from common.trainer import TrainConfig
from phase3_production import distill

pytestmark = getattr(pytest.mark, "p3-onnx")


class RecordingTeacher(torch.nn.Module):
    """A fixed linear teacher that remembers the batches it was shown."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3 * 4 * 4, 3)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.linear(x.flatten(1))


def test_the_teacher_sees_the_student_s_batches_and_is_never_trained():
    torch.manual_seed(0)
    teacher, student = RecordingTeacher(), torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    batches = [(torch.randn(8, 3, 4, 4), torch.randint(0, 3, (8,))) for _ in range(4)]
    trainer = distill.DistillationTrainer(student, TrainConfig(epochs=1, lr=0.1), teacher=teacher, temperature=4.0,
                                          alpha=0.9, device="cpu", progress=False)
    trainer.fit(batches)
    assert len(teacher.seen) == 4 and all(torch.equal(a, x) for a, (x, _) in zip(teacher.seen, batches))
    assert not teacher.training                               # eval mode: BatchNorm statistics stay the teacher's
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_the_distillation_trainer_optimises_the_distillation_loss():
    torch.manual_seed(1)
    teacher, student = RecordingTeacher(), torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))
    trainer = distill.DistillationTrainer(student, TrainConfig(epochs=1), teacher=teacher, temperature=2.0,
                                          alpha=0.5, device="cpu", progress=False)
    x, y = torch.randn(8, 3, 4, 4), torch.randint(0, 3, (8,))
    logits = student(x)
    expected = distill.distillation_loss(logits, teacher(x), y, temperature=2.0, alpha=0.5)
    assert torch.allclose(trainer.loss(logits, x, y), expected)


@pytest.mark.slow
def test_a_quick_run_measures_all_six_variants(quick_p2_cnn_run, tmp_path, monkeypatch):
    monkeypatch.setattr(distill, "QUICK_SUBSET", (400, 100, 200))
    metrics = distill.main(["--quick", "--teacher", str(quick_p2_cnn_run / "model.pt"), "--run-dir", str(tmp_path)])
    assert distill.check(metrics) == []
    rows = {(r["model"], r["precision"]): r for r in metrics["rows"]}
    assert len(rows) == 6 and all(r["batch1_ms"] > 0 and 0 <= r["test_accuracy"] <= 1 for r in rows.values())
    assert rows[("teacher", "fp32")]["speedup_vs_teacher_fp32"] == 1.0
    assert rows[("student", "int8")]["file_bytes"] < rows[("student", "fp32")]["file_bytes"] / 2
    saved = json.loads((tmp_path / "distill.json").read_text())
    assert saved["rows"] == metrics["rows"] and (tmp_path / "distill.png").is_file()
    table = (tmp_path / "distill.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 7    # a header and six rows
    assert "| student distilled | int8 |" in table
    broken = dict(metrics, rows=metrics["rows"][:-1])
    assert distill.check(broken) == ["the table lacks a model or a precision"]
