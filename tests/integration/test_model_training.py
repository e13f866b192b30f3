"""`MNISTClassifier` trained: a batch overfit, batch norm's lone last image, schedules, the epoch metrics."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from mnist_lightning import MNISTClassifier
from mnist_lightning.errors import ArgumentError


def test_a_tiny_batch_can_be_overfit() -> None:
    torch.manual_seed(0)
    model = MNISTClassifier(hidden_sizes=[64], lr=1e-2)
    images, labels = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
    optimizer = model.configure_optimizers()["optimizer"]
    for _ in range(100):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.01
    assert (model(images).argmax(1) == labels).all()


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`")
def test_a_final_training_batch_of_one_image_is_skipped_with_batch_norm() -> None:
    images, labels = torch.randn(9, 784), torch.arange(9) % 10

    def trained_on(count: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = MNISTClassifier(hidden_sizes=[8], batch_norm=True)
        batches = DataLoader(TensorDataset(images[:count], labels[:count]), batch_size=4)
        trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
        trainer.fit(model, train_dataloaders=batches)
        return model.state_dict()

    with_single_last, without = trained_on(9), trained_on(8)  # batches of 4, 4, 1 against 4, 4
    for name, value in without.items():
        torch.testing.assert_close(with_single_last[name], value)
    assert MNISTClassifier(hidden_sizes=[8]).training_step((torch.randn(1, 784), torch.tensor([3])), 0) is not None


@pytest.mark.parametrize(
    ("schedule", "peak_step"),
    [("constant", None), ("one_cycle", 0.3), ("cosine", 0.0)],
)
def test_learning_rate_schedules_span_the_whole_fit(schedule: str, peak_step: float | None) -> None:
    rates: list[float] = []

    class RecordRate(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    model = MNISTClassifier(hidden_sizes=[8], optimizer="adamw", lr=0.01, lr_schedule=schedule)
    batches = DataLoader(TensorDataset(torch.randn(40, 784), torch.arange(40) % 10), batch_size=4)
    trainer = L.Trainer(max_epochs=2, callbacks=[RecordRate()], logger=False, enable_checkpointing=False)
    trainer.fit(model, train_dataloaders=batches)

    assert isinstance(trainer.optimizers[0], torch.optim.AdamW)
    assert len(rates) == 20
    if peak_step is None:
        assert rates == [0.01] * 20
        return
    assert max(rates) == pytest.approx(0.01, rel=0.01)
    assert abs(rates.index(max(rates)) - peak_step * 19) <= 1
    assert rates[-1] < 0.001, "annealed by the last step"


def test_a_schedule_without_an_end_of_training_is_refused_with_the_fix() -> None:
    model = MNISTClassifier(hidden_sizes=[8], lr_schedule="one_cycle")
    batches = DataLoader(TensorDataset(torch.randn(8, 784), torch.arange(8) % 10), batch_size=4)
    trainer = L.Trainer(max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ArgumentError, match="max_epochs"):
        trainer.fit(model, train_dataloaders=batches)


def test_training_metrics_cover_each_epoch_as_its_batches_were_seen() -> None:
    """train/acc and train/loss are over the logits each batch had when it was trained on (the weights change
    between batches), every batch of the epoch counted once."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    logged: list[tuple[float, float]] = []

    class Record(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            seen.clear()
            if expected:  # the previous epoch's, logged after the callbacks' on_train_epoch_end
                self.read_logged(trainer)

        def on_train_end(self, trainer, pl_module) -> None:
            self.read_logged(trainer)

        def read_logged(self, trainer) -> None:
            logged.append((trainer.callback_metrics["train/acc"].item(), trainer.callback_metrics["train/loss"].item()))

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append((pl_module(batch[0]).detach(), batch[1]))  # the weights this batch is trained with

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            logits, labels = torch.cat([s[0] for s in seen]), torch.cat([s[1] for s in seen])
            batch_losses = torch.stack([F.cross_entropy(*s) for s in seen])
            expected.append(((logits.argmax(1) == labels).float().mean().item(), batch_losses.mean().item()))

    expected: list[tuple[float, float]] = []
    torch.manual_seed(0)
    model = MNISTClassifier(hidden_sizes=[16], lr=0.05)
    batches = DataLoader(TensorDataset(torch.randn(50, 784), torch.arange(50) % 10), batch_size=8, shuffle=True)
    trainer = L.Trainer(max_epochs=3, callbacks=[Record()], logger=False, enable_checkpointing=False)
    trainer.fit(model, train_dataloaders=batches)

    assert len(logged) == 3
    for (acc, loss), (expected_acc, expected_loss) in zip(logged, expected, strict=True):
        assert acc == pytest.approx(expected_acc, abs=1e-6)
        assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert logged[0] != logged[-1], "the metrics start afresh each epoch"
