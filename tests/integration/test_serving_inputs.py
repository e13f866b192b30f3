"""Every file `export` and `serve` take and every place `export` writes, in each broken form a user can hand them:
one line that names the file or flag, what is wrong and the fix (exit status 2, no traceback), and nothing the user
has is touched. And the inputs that must work: checkpoints of another dataset or of earlier versions, models exported
by earlier versions. All in this process, on the session's tiny checkpoint and synthetic data."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import uvicorn
from onnx import TensorProto, helper

from mnist_lightning import commands
from mnist_lightning.datasets import DATASETS
from mnist_lightning.errors import CheckpointError
from mnist_lightning.model import MNISTClassifier
from mnist_lightning.runs.checkpoints import DATAMODULE_STATE
from mnist_lightning.tools.serving import export
from mnist_lightning.tools.serving.predictors import OnnxPredictor, load_probability_model
from mnist_lightning.tools.serving.serve import load_predictor
from tests.helpers import (
    TINY_RUN,
    CodeOnUnpickling,
    Exported,
    as_a_user,
    cli_context,
    one_line_error,
    read_only_folder,
    synthetic_arrays,
    unreadable,
)

FASHION_CLASSES = list(DATASETS["fashion_mnist"].classes)


@pytest.fixture(autouse=True)
def never_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """A `serve` that gets past its checks fails the test instead of serving for ever."""

    def run(self, sockets=None) -> None:
        raise AssertionError("serve started serving: every check passed")

    monkeypatch.setattr(uvicorn.Server, "run", run)


def command_error(capsys, *args: str) -> str:
    """`python -m mnist_lightning ARGS` in this process: exit status 2 and one line on stderr, which is returned."""
    return one_line_error(capsys, list(map(str, args)), main=commands.main, alone=True)


@pytest.fixture(scope="module")
def fashion_checkpoint(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The best checkpoint of a tiny network fitted on the synthetic Fashion-MNIST (`--data.dataset fashion_mnist`)."""
    from mnist_lightning.cli import cli_main

    workdir = tmp_path_factory.mktemp("fashion-fit")
    args = ["fit", f"--data.data_dir={synthetic_dir}", "--data.dataset=fashion_mnist", *TINY_RUN]
    args += ["--trainer.logger=false", "--test_after_fit=false"]
    with cli_context(synthetic_dir, workdir), contextlib.redirect_stdout(io.StringIO()):
        cli = cli_main(args)
        return Path(cli.trainer.checkpoint_callback.best_model_path).resolve()


def rewritten(checkpoint: Path, target: Path, change: Callable[[dict], None]) -> Path:
    """A copy of `checkpoint` at `target`, with `change` made to its contents."""
    contents = torch.load(checkpoint, weights_only=True)
    change(contents)
    torch.save(contents, target)
    return target


# --- --ckpt_path, broken ------------------------------------------------------------------------------------------


def _truncated(path: Path, tiny: Path) -> None:
    path.write_bytes(tiny.read_bytes()[: tiny.stat().st_size // 2])


def _foreign(path: Path, tiny: Path) -> None:
    rewritten(tiny, path, lambda c: c["hyper_parameters"].update(vocab_size=30000))


def _other_network(path: Path, tiny: Path) -> None:
    rewritten(tiny, path, lambda c: c["hyper_parameters"].update(hidden_sizes=[64]))


def _contradicting_record(path: Path, tiny: Path) -> None:
    rewritten(tiny, path, lambda c: c[DATAMODULE_STATE]["dataset"].update(image_shape=[1, 20, 20]))


def _unsafe(path: Path, tiny: Path) -> None:
    torch.save({"state_dict": {}, "payload": CodeOnUnpickling(path.parent / "pwned")}, path)


BROKEN_CHECKPOINTS = {
    # case: (how to make it at PATH from the tiny checkpoint, what the line says after `--ckpt_path PATH`)
    "missing": (lambda path, tiny: None, ": no such file"),
    "empty": (lambda path, tiny: path.write_bytes(b""), " is an empty file (0 bytes): it was truncated, or not"),
    "folder": (lambda path, tiny: path.mkdir(), " is a folder: pass a .ckpt file in it"),
    "text": (lambda path, tiny: path.write_text("epochs: 3\n"), " is not a complete checkpoint: it was truncated"),
    "random-bytes": (lambda path, tiny: path.write_bytes(os.urandom(4096)), " is not a complete checkpoint"),
    "truncated": (_truncated, " is not a complete checkpoint: it was truncated, or not written by torch.save"),
    "not-lightning": (lambda path, tiny: torch.save(torch.zeros(3), path), " is not a Lightning checkpoint"),
    "foreign": (_foreign, " is not a checkpoint of this project's MNISTClassifier (it has hyperparameters vocab_size)"),
    "other-network": (_other_network, " does not fit MNISTClassifier"),
    "unsafe": (_unsafe, " was refused by torch.load(weights_only=True): it would call"),
    "dataset-not-the-networks": (
        _contradicting_record,
        " records mnist (1×20×20 images, 10 classes) but its network takes 784 pixels to 10 classes: use a checkpoint "
        "written by this project's `fit`",
    ),
    "onnx-model": (
        lambda path, tiny: None,  # the exported model, given as a checkpoint
        " is an ONNX model, not a checkpoint: it is exported already; serve it with "
        "`python -m mnist_lightning serve --model",
    ),
    "unreadable": (lambda path, tiny: shutil.copy(tiny, path), " cannot be read (Permission denied): make it readable"),
}


@pytest.mark.parametrize("command", ["export", "serve"])
@pytest.mark.parametrize("case", BROKEN_CHECKPOINTS)
def test_a_broken_checkpoint_is_one_line_that_names_it_and_the_fix(
    exported: Exported, synthetic_mnist: Path, tmp_path: Path, capsys, command: str, case: str
) -> None:
    make, says = BROKEN_CHECKPOINTS[case]
    path = tmp_path / "given" / "model.ckpt"  # alone in its folder: no checkpoint beside it to suggest
    path.parent.mkdir()
    if case == "onnx-model":
        path = path.with_suffix(".onnx")
        shutil.copy(exported.model, path)
    make(path, exported.checkpoint)
    before = sorted(p.name for p in path.parent.iterdir())
    output = tmp_path / "out" / "model.onnx"
    args = {
        "export": ["export", "--ckpt_path", path, "--output", output, "--data_dir", synthetic_mnist],
        "serve": ["serve", "--ckpt_path", path, "--port", "0"],
    }[command]
    with unreadable(path) if case == "unreadable" else contextlib.nullcontext():
        line = command_error(capsys, *args)
    assert line.startswith(f"error: --ckpt_path {path}{says}"), line
    assert not output.parent.exists(), "nothing is written"
    assert sorted(p.name for p in path.parent.iterdir()) == before, "nothing beside it was written"


# --- --ckpt_path, working: other datasets, earlier versions --------------------------------------------------------


def probabilities_normalized_with(checkpoint: Path, pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    """The checkpoint's network, by hand, on `pixels` normalized with `mean` and `std`."""
    contents = torch.load(checkpoint, weights_only=True)
    hparams = {k: v for k, v in contents["hyper_parameters"].items() if not k.startswith("_")}
    classifier = MNISTClassifier(**hparams)
    classifier.load_state_dict(contents["state_dict"])
    with torch.inference_mode():  # the network alone, behind the normalization given here
        return classifier.net.eval()((torch.from_numpy(pixels) - mean) / std).softmax(dim=-1).numpy()


def test_a_checkpoint_of_another_dataset_exports_with_its_class_names_and_normalization(
    fashion_checkpoint: Path, synthetic_mnist: Path, tmp_path: Path, capsys
) -> None:
    output = tmp_path / "fashion.onnx"
    commands.main(
        ["export", f"--ckpt_path={fashion_checkpoint}", f"--output={output}", f"--data_dir={synthetic_mnist}"]
    )
    printed = capsys.readouterr().out
    assert "Official test set: onnxruntime agrees with the checkpoint on 300 of 300 images" in printed
    assert printed.rstrip().endswith("N×10 probabilities, fashion_mnist, validation accuracy 1.0000"), printed
    metadata = {p.key: p.value for p in onnx.load(output).metadata_props}
    assert metadata["dataset"] == "fashion_mnist" and json.loads(metadata["classes"]) == FASHION_CLASSES
    images, _ = synthetic_arrays(16, seed=9)
    pixels = (images[:, None] / 255).astype(np.float32)
    fashion, mnist = DATASETS["fashion_mnist"], DATASETS["mnist"]
    onnx_probabilities = OnnxPredictor(output)(pixels)
    expected = probabilities_normalized_with(fashion_checkpoint, pixels, fashion.mean, fashion.std)
    np.testing.assert_allclose(onnx_probabilities, expected, atol=1e-5)
    with_mnists = probabilities_normalized_with(fashion_checkpoint, pixels, mnist.mean, mnist.std)
    assert np.abs(onnx_probabilities - with_mnists).max() > 1e-3, "the normalizations differ enough to tell apart"
    served = load_predictor(fashion_checkpoint, None, "torch")  # serve --ckpt_path ... --runtime torch
    assert served.info.classes == tuple(FASHION_CLASSES)
    np.testing.assert_allclose(served(pixels), expected, atol=1e-5)


def test_the_classes_a_checkpoint_records_and_its_models_normalization_are_used_over_the_registrys(
    tiny_checkpoint: Path, tmp_path
) -> None:
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

    def record(contents: dict) -> None:
        contents[DATAMODULE_STATE]["dataset"].update(classes=names)
        contents["state_dict"].update({"normalize.mean": torch.tensor(0.5), "normalize.std": torch.tensor(0.25)})

    checkpoint = rewritten(tiny_checkpoint, tmp_path / "recorded.ckpt", record)
    model, info = load_probability_model(checkpoint)
    assert info.classes == tuple(names) and info.dataset == "mnist"
    pixels = np.random.default_rng(1).random((5, 1, 28, 28), dtype=np.float32)
    with torch.inference_mode():
        actual = model(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(actual, probabilities_normalized_with(checkpoint, pixels, 0.5, 0.25), atol=1e-6)


def test_a_checkpoint_that_records_no_dataset_is_refused_in_one_line(tiny_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = rewritten(tiny_checkpoint, tmp_path / "oldest.ckpt", lambda contents: contents.pop(DATAMODULE_STATE))
    with pytest.raises(CheckpointError) as error:
        load_probability_model(checkpoint)
    assert str(error.value) == (
        f"--ckpt_path {checkpoint} does not record its dataset: use a checkpoint written by `python -m mnist_lightning "
        "fit`"
    )


def test_a_checkpoint_of_a_dataset_not_registered_here_is_checked_on_random_images(
    exported: Exported, tmp_path: Path, capsys
) -> None:
    """Its recorded facts are enough to export it; its test set cannot be read, so the self-check says what it used."""
    names = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]

    def record(contents: dict) -> None:
        contents[DATAMODULE_STATE]["dataset"].update(name="kmnist", classes=names)
        contents["datamodule_hyper_parameters"]["dataset"] = "kmnist"

    checkpoint = rewritten(exported.checkpoint, tmp_path / "kmnist.ckpt", record)
    commands.main(["export", f"--ckpt_path={checkpoint}"])
    printed = capsys.readouterr().out
    assert printed.startswith(
        "Random images (kmnist is not a dataset known here: its test set cannot be read): onnxruntime agrees with the "
        "checkpoint on 256 of 256 images (100.00%)"
    ), printed
    metadata = metadata_of(tmp_path / "kmnist.onnx")
    assert metadata["dataset"] == "kmnist" and json.loads(metadata["classes"]) == names


# --- serve --model, broken ----------------------------------------------------------------------------------------


def with_metadata(model: bytes, **metadata: str) -> bytes:
    """`model` with its metadata_props replaced by `metadata`."""
    proto = onnx.load_from_string(model)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def identity_model(**metadata: str) -> bytes:
    """A valid ONNX model of another program: y = x, on N×3 floats."""
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [value("x", TensorProto.FLOAT, [None, 3])],
        [value("y", TensorProto.FLOAT, [None, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.extend(onnx.StringStringEntryProto(key=k, value=v) for k, v in metadata.items())
    return model.SerializeToString()


def metadata_of(model: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(model).metadata_props}


FIX = "export the checkpoint with `python -m mnist_lightning export --ckpt_path CHECKPOINT`"
MNIST_SHAPE = json.dumps([1, 28, 28])
NOT_COMPLETE = " is not a complete ONNX model (onnxruntime: Failed to load model because protobuf parsing failed): it "
NOT_COMPLETE += "was truncated, or not written by `python -m mnist_lightning export`; export the checkpoint again"
BROKEN_MODELS = {
    # case: (the file's contents from the good model's (None: see the test), what the line says after `--model PATH`)
    "missing": (None, ": no such file; write one with `python -m mnist_lightning export --ckpt_path CHECKPOINT`"),
    "empty": (lambda good, tiny: b"", " is an empty file (0 bytes): it was truncated or never written; export it"),
    "folder": (None, " is a folder: pass the .onnx file in it that `python -m mnist_lightning export --ckpt_path"),
    "text": (lambda good, tiny: b"a shopping list\n", NOT_COMPLETE),
    "random-bytes": (lambda good, tiny: bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8)), NOT_COMPLETE),
    "truncated": (lambda good, tiny: good[: len(good) // 2], NOT_COMPLETE),
    "pytorch-checkpoint": (
        lambda good, tiny: tiny.read_bytes(),
        " is a PyTorch checkpoint, not an ONNX model: serve it with --ckpt_path",
    ),
    "another-programs-model": (
        lambda good, tiny: identity_model(),
        f" has no dataset, class names and image shape in its metadata, so what it takes and gives is unknown: it was "
        f"not written by this project's export; {FIX}",
    ),
    "metadata-without-classes": (
        lambda good, tiny: with_metadata(good, dataset="mnist", image_shape=MNIST_SHAPE),
        " has no dataset, class names and image shape in its metadata",
    ),
    "metadata-unreadable": (
        lambda good, tiny: with_metadata(good, dataset="mnist", classes="0,1,2", image_shape=MNIST_SHAPE),
        " records its classes or image shape unreadably (",
    ),
    "metadata-of-another-graph": (
        lambda good, tiny: identity_model(
            dataset="mnist", classes=json.dumps(list("0123456789")), image_shape=MNIST_SHAPE
        ),
        f" takes x N×3 and gives y N×3, but its metadata promises images N×1×28×28 → probabilities N×10: it was not "
        f"written by this project's export; {FIX}",
    ),
    "classes-not-the-graphs": (
        lambda good, tiny: with_metadata(good, dataset="mnist", classes='["a", "b", "c"]', image_shape=MNIST_SHAPE),
        " takes images N×1×28×28 and gives probabilities N×10, but its metadata promises images N×1×28×28 → "
        "probabilities N×3",
    ),
    "fixed-batch-of-two": (
        lambda good, tiny: fixed_batch(good, 2),
        " takes images 2×1×28×28 and gives probabilities 2×10, but its metadata promises images N×1×28×28 → "
        "probabilities N×10",
    ),
    "unreadable": (lambda good, tiny: good, " cannot be read (Permission denied): make it readable"),
}


def fixed_batch(model: bytes, size: int) -> bytes:
    """`model` with its batch axis fixed at `size`, as an export without dynamic shapes makes it."""
    proto = onnx.load_from_string(model)
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = size
    return proto.SerializeToString()


@pytest.mark.parametrize("case", BROKEN_MODELS)
def test_a_broken_model_is_one_line_that_names_it_and_the_fix(
    exported: Exported, tmp_path: Path, capsys, case: str
) -> None:
    contents, says = BROKEN_MODELS[case]
    path = tmp_path / "model.onnx"
    if case == "folder":
        path.mkdir()
    elif contents is not None:
        path.write_bytes(contents(exported.model.read_bytes(), exported.checkpoint))
    with unreadable(path) if case == "unreadable" else contextlib.nullcontext():
        line = command_error(capsys, "serve", "--model", path, "--port", "0")
    assert line.startswith(f"error: --model {path}{says}"), line


def test_a_model_with_a_batch_of_one_serves(exported: Exported, tmp_path: Path) -> None:
    path = tmp_path / "one.onnx"
    path.write_bytes(fixed_batch(exported.model.read_bytes(), 1))
    pixels = np.random.default_rng(3).random((1, 1, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(OnnxPredictor(path)(pixels), OnnxPredictor(exported.model)(pixels), atol=1e-7)


def test_an_installation_without_the_pages_files_is_one_line(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from mnist_lightning.tools.serving import app

    monkeypatch.setattr(app, "STATIC", tmp_path / "static")  # as in a wheel built without the package data
    line = command_error(capsys, "serve", "--model", exported.model, "--port", "0")
    assert line == (
        f"error: the page's files index.html, app.js, style.css, favicon.svg are missing from {tmp_path / 'static'}: "
        "this installation lacks them; reinstall with `pip install -e '.[serve]'` from the repository"
    )


# --- serve's flags ------------------------------------------------------------------------------------------------


@pytest.fixture
def busy_port() -> int:
    """A port that another program listens on (127.0.0.1)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


MISSING_MODEL = "/nowhere/model.onnx"  # the flags are checked before the model is read: no line about it

FLAG_CASES = {
    # case: (flags after `serve --model MISSING_MODEL`, the whole line or its start)
    "port-99999": (["--port", "99999"], "--port 99999 is not a port: give one from 1 to 65535 (0: any free port)"),
    "port-negative": (["--port", "-1"], "--port -1 is not a port: give one from 1 to 65535 (0: any free port)"),
    "port-not-a-number": (
        ["--port", "eighty"],
        "--port eighty: expected an integer (`python -m mnist_lightning serve --help` says what each flag takes)",
    ),
    "port-in-use": (
        ["--port", "{busy}"],
        "--port {busy}: another program already listens on 127.0.0.1:{busy}: stop it, or pass another --port (0: "
        "any free port)",
    ),
    "host-unknown": (
        ["--host", "no-such-host.invalid"],
        "--host no-such-host.invalid does not resolve to an address (",
    ),
    "host-not-here": (  # TEST-NET-1: an address no machine running the tests has
        ["--host", "192.0.2.1"],
        "--host 192.0.2.1 is not an address of this machine: give one of its own, e.g. 127.0.0.1",
    ),
    "runtime-unknown": (
        ["--runtime", "tensorflow"],
        "--runtime tensorflow: expected one of onnxruntime, torch (`python -m mnist_lightning serve --help` says "
        "what each flag takes)",
    ),
    "runtime-torch-for-onnx": (
        ["--runtime", "torch"],
        "--runtime torch needs --ckpt_path: an ONNX --model runs on onnxruntime",
    ),
    "both": (["--ckpt_path", "x.ckpt"], "pass either --ckpt_path CHECKPOINT or --model MODEL.onnx (one of them)"),
    "unknown-flag": (
        ["--prot", "8000"],
        "unknown flag --prot: did you mean --port? `python -m mnist_lightning serve --help` lists every flag",
    ),
}


@pytest.mark.parametrize("case", FLAG_CASES)
def test_a_flag_that_cannot_work_is_one_line_before_the_model_is_loaded(capsys, busy_port: int, case: str) -> None:
    flags, says = FLAG_CASES[case]
    flags = [flag.format(busy=busy_port) for flag in flags]
    line = command_error(capsys, "serve", "--model", MISSING_MODEL, *flags)
    assert line.startswith(f"error: {says.format(busy=busy_port)}"), line


def test_a_privileged_port_is_one_line_for_a_user(capsys) -> None:
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if start <= 1:
        pytest.fail("every port is unprivileged on this machine (net.ipv4.ip_unprivileged_port_start = 0)")
    port = start - 1
    with as_a_user():
        line = command_error(capsys, "serve", "--model", MISSING_MODEL, "--port", port)
    assert line == (
        f"error: --port {port} needs root privileges here (ports below 1024 do): give one from 1024 to 65535 (0: any "
        "free port)"
    )


def test_serve_without_a_model_is_one_line(capsys) -> None:
    assert (
        command_error(capsys, "serve")
        == "error: pass either --ckpt_path CHECKPOINT or --model MODEL.onnx (one of them)"
    )


# --- export --output ----------------------------------------------------------------------------------------------

NOTHING_CHANGED = "nothing that was there before was changed"
OUTPUT_CASES = {
    # case: (--output, made from the test's folder, and what it holds before; what the line says)
    "not-onnx": (
        lambda folder: folder / "model.txt",
        "--output {output} does not end in .onnx, as an ONNX model's name does (and a checkpoint's never): pass "
        "--output {folder}/model.onnx",
    ),
    "a-folder": (
        lambda folder: (folder / "models").mkdir() or folder / "models",
        "--output {output} is a folder: pass the model's file name, e.g. --output {output}/",
    ),
    "a-folder-named-onnx": (
        lambda folder: (folder / "model.onnx").mkdir() or folder / "model.onnx",
        "--output {output} is a folder: pass the model's file name",
    ),
    "parent-is-a-file": (
        lambda folder: (folder / "notes").write_text("mine") and folder / "notes" / "model.onnx",
        "could not write {output} (Not a directory): a file stands where a folder is needed: move it away or pass "
        f"--output PATH; {NOTHING_CHANGED}",
    ),
    "exists": (
        lambda folder: (folder / "model.onnx").write_text("mine") and folder / "model.onnx",
        "--output {output} already exists: pass --overwrite true, or another --output",
    ),
    "read-only-folder": (
        lambda folder: (folder / "locked").mkdir() or folder / "locked" / "model.onnx",
        "could not write {output} (Permission denied): make that folder writable or pass --output PATH; "
        f"{NOTHING_CHANGED}",
    ),
}


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder under `folder`, with each file's bytes."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_an_output_that_cannot_or_must_not_be_written_is_one_line_before_the_export(
    exported: Exported, synthetic_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, case: str
) -> None:
    make, says = OUTPUT_CASES[case]
    output = make(tmp_path)
    before = snapshot(tmp_path)
    # Refused before the export: were it reached, this would fail the test.
    monkeypatch.setattr(export, "to_onnx", lambda model, info: pytest.fail("the export started"))
    args = ["export", "--ckpt_path", exported.checkpoint, "--output", output, "--data_dir", synthetic_mnist]
    with read_only_folder(output.parent) if case == "read-only-folder" else contextlib.nullcontext():
        line = command_error(capsys, *args)
    assert line.startswith(f"error: {says.format(output=output, folder=tmp_path)}"), line
    assert snapshot(tmp_path) == before


def test_an_output_over_the_checkpoint_itself_is_refused_even_with_overwrite(
    exported: Exported, tmp_path: Path, capsys
) -> None:
    checkpoint = tmp_path / "last.ckpt"
    shutil.copy(exported.checkpoint, checkpoint)
    line = command_error(capsys, "export", "--ckpt_path", checkpoint, "--output", checkpoint, "--overwrite", "true")
    assert line.startswith(f"error: --output {checkpoint} does not end in .onnx"), line
    named_onnx = tmp_path / "odd-name.onnx"  # a checkpoint named like a model
    checkpoint.rename(named_onnx)
    line = command_error(capsys, "export", "--ckpt_path", named_onnx, "--output", named_onnx, "--overwrite", "true")
    assert line == f"error: --output {named_onnx} is --ckpt_path itself: pass another --output, ending in .onnx"
    line = command_error(capsys, "export", "--ckpt_path", named_onnx)
    assert line == (
        f"error: --ckpt_path {named_onnx} ends in .onnx, the name export would write the model to: pass --output "
        "PATH.onnx"
    )
    assert named_onnx.read_bytes() == exported.checkpoint.read_bytes()


@pytest.mark.parametrize(("code", "fix"), [("ENOSPC", "free space on that disk"), ("EROFS", "remount that file")])
def test_a_full_disk_or_read_only_file_system_at_the_write_keeps_the_previous_model(
    exported: Exported,
    synthetic_mnist: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    code: str,
    fix: str,
) -> None:
    import errno

    output = tmp_path / "model.onnx"
    output.write_bytes(b"the model in use")
    number = getattr(errno, code)

    def fail(*args, **kwargs):
        raise OSError(number, os.strerror(number))

    monkeypatch.setattr("os.fsync", fail)
    args = ["--ckpt_path", exported.checkpoint, "--output", output, "--overwrite", "true", "--data_dir"]
    line = command_error(capsys, "export", *args, synthetic_mnist)
    assert line.startswith(f"error: could not write {output} ({os.strerror(number)}): {fix}"), line
    assert line.endswith(f" or pass --output PATH; {NOTHING_CHANGED}"), line
    assert output.read_bytes() == b"the model in use"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"], "no temporary file is left"


def test_an_output_in_a_missing_folder_creates_it(exported: Exported, synthetic_mnist: Path, tmp_path, capsys) -> None:
    output = tmp_path / "models" / "2026" / "tiny.onnx"
    commands.main(
        ["export", f"--ckpt_path={exported.checkpoint}", f"--output={output}", f"--data_dir={synthetic_mnist}"]
    )
    assert f"Wrote {output} (" in capsys.readouterr().out
    assert metadata_of(output) == metadata_of(exported.model)


# --- export --data_dir --------------------------------------------------------------------------------------------


def _truncated_test_images(folder: Path, synthetic: Path) -> None:
    shutil.copytree(synthetic / "MNIST", folder / "MNIST")
    images = folder / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])


DATA_CASES = {
    "a-file": (
        lambda folder, synthetic: (folder / "data").write_text("not a folder"),
        "could not write the data folder {data} (Not a directory): a file stands where a folder is needed: move it "
        "away or pass --data_dir DIR (or set MNIST_LIGHTNING_DATA) for another data folder; nothing that was there "
        "before was changed",
    ),
    "no-files": (
        lambda folder, synthetic: (folder / "data").mkdir(),
        "could not obtain mnist, tried (1) already on disk in {data}/MNIST/raw: missing train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte: put the four uncompressed files",
    ),
    "a-truncated-file": (
        lambda folder, synthetic: _truncated_test_images(folder / "data", synthetic),
        "{data}/MNIST/raw/t10k-images-idx3-ubyte",
    ),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_a_broken_data_dir_is_one_line_before_the_export(
    exported: Exported,
    synthetic_mnist: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    case: str,
) -> None:
    make, says = DATA_CASES[case]
    data = tmp_path / "data"
    make(tmp_path, synthetic_mnist)
    before = snapshot(tmp_path)
    monkeypatch.setattr(export, "to_onnx", lambda model, info: pytest.fail("the export started"))
    output = tmp_path / "model.onnx"
    line = command_error(capsys, "export", "--ckpt_path", exported.checkpoint, "--output", output, "--data_dir", data)
    assert says.format(data=data) in line, line
    assert "--data.data_dir" not in line, "export's flag is --data_dir"
    files = lambda tree: {name: content for name, content in tree.items() if content is not None}  # noqa: E731
    assert files(snapshot(tmp_path)) == files(before), "no file written or changed (the data module makes its folders)"
