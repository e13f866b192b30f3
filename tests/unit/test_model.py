"""`MNISTClassifier` and its network, untrained: layers, shapes, hyperparameters, refusals, one step's loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnist_lightning import MNISTClassifier


def test_default_network_is_the_classic_784_100_10_mlp() -> None:
    model = MNISTClassifier()
    linears = [layer for layer in model.net if isinstance(layer, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(784, 100), (100, 10)]
    assert not any(isinstance(layer, nn.Dropout) for layer in model.net)


def test_output_shape_for_images_and_flat_vectors() -> None:
    model = MNISTClassifier(hidden_sizes=[32, 16], dropout=0.1)
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    assert model(torch.randn(3, 784)).shape == (3, 10)
    assert sum(isinstance(layer, nn.Dropout) for layer in model.net) == 2


def test_hyperparameters_are_saved() -> None:
    model = MNISTClassifier(hidden_sizes=[64], dropout=0.25, lr=3e-4, weight_decay=1e-5)
    assert dict(model.hparams) == {
        "hidden_sizes": [64],
        "dropout": 0.25,
        "batch_norm": False,
        "lr": 3e-4,
        "weight_decay": 1e-5,
        "optimizer": "adam",
        "lr_schedule": "constant",
        "label_smoothing": 0.0,
        "input_size": 784,
        "num_classes": 10,
        "mean": 0.1307,
        "std": 0.3081,
    }


def test_attributes_set_on_the_model_still_register_as_parameters_and_submodules() -> None:
    model = MNISTClassifier()
    model._current_fx_name = "training_step"  # set by Lightning around every hook, past nn.Module's checks
    model.extra = nn.Linear(2, 2)
    model.scale = nn.Parameter(torch.ones(1))
    assert model._current_fx_name == "training_step"
    assert {"extra.weight", "scale"} <= model.state_dict().keys()


def test_predict_step_returns_classes_and_probabilities() -> None:
    model = MNISTClassifier()
    labels = torch.tensor([3, 1, 4])
    out = model.predict_step((torch.randn(3, 1, 28, 28), labels), 0)
    assert out["prediction"].shape == (3,) and out["label"] is labels
    torch.testing.assert_close(out["probabilities"].sum(1), torch.ones(3))
    assert (out["prediction"] == out["probabilities"].argmax(1)).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_sizes": []}, "hidden_sizes"),
        ({"hidden_sizes": [100, 0]}, "hidden_sizes"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"lr": 0}, "lr"),
        ({"weight_decay": -1}, "weight_decay"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_invalid_hyperparameters_are_refused_with_their_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MNISTClassifier(**kwargs)


def test_batch_norm_sits_between_each_hidden_linear_layer_and_its_activation() -> None:
    model = MNISTClassifier(hidden_sizes=[32, 16], batch_norm=True, dropout=0.1)
    kinds = [type(layer).__name__ for layer in model.net]
    assert kinds == ["Flatten"] + ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 2 + ["Linear"]
    assert model.net[1].bias is None, "BatchNorm's shift replaces the bias"


def test_label_smoothing_is_the_training_loss() -> None:
    model = MNISTClassifier(hidden_sizes=[8], label_smoothing=0.1)
    images, labels = torch.randn(6, 1, 28, 28), torch.arange(6)
    loss = model.training_step((images, labels), 0)
    torch.testing.assert_close(loss, F.cross_entropy(model(images), labels, label_smoothing=0.1))
    assert not torch.allclose(loss, F.cross_entropy(model(images), labels))


@pytest.mark.parametrize(
    ("dtype", "eps"), [(torch.float32, 1e-8), (torch.float64, 1e-8), (torch.bfloat16, 1e-8), (torch.float16, 6.1e-5)]
)
def test_adams_epsilon_does_not_round_to_zero_in_the_weights_dtype(dtype: torch.dtype, eps: float) -> None:
    """In float16 (`--trainer.precision 16-true`) Adam's default epsilon of 1e-8 is 0, and the loss became nan."""
    optimizer = MNISTClassifier(hidden_sizes=[8]).to(dtype).configure_optimizers()["optimizer"]
    assert optimizer.defaults["eps"] == pytest.approx(eps, rel=0.01)
    assert torch.tensor(optimizer.defaults["eps"], dtype=dtype) > 0
