"""Requests per second and latency of `python -m mnist_lightning serve`, onnxruntime against torch; and one image
through `predict` against one request to a running `serve`. Measured, never asserted.

1. `model`: one 28×28 image through each runtime's predictor in this process (no HTTP, no image preparation):
   the median of many calls, in microseconds.
2. `serve`: a server process per runtime (`--model X.onnx` for onnxruntime, `--ckpt_path X --runtime torch`), and
   1, 8 and 32 client threads, each with its own keep-alive connection, posting the same 280×280 PNG drawing
   for `--duration` seconds; the runtimes alternate at each level. The clients run on the same machine and take
   CPU from the server: on 2 cores the numbers are a floor, not a capacity.
3. `predict`: `python -m mnist_lightning predict --ckpt_path X --data.predict_path one.png` as a fresh process,
   which is how a single image is read without a server, against one request to the running server.

    python benchmarks/serve.py --ckpt_path CKPT --model MODEL.onnx              # about 3 minutes
    python benchmarks/serve.py --ckpt_path CKPT --model MODEL.onnx --duration 3  # a quick look

The machine's load average (`uptime`'s) before and after goes into the report beside the numbers, and the CPU time
that other processes took while it ran (all the machine's busy time, from /proc/stat, less this benchmark's and its
servers'): on a machine that other jobs share, the requests per second fall with it (72 against about 500 at 8
clients on the same 2 cores).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from bench import REPO_ROOT, RESULTS_DIR, write_report
from PIL import Image, ImageDraw

RUNTIMES = ("onnxruntime", "torch")
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}  # this checkout's package, whatever the working folder


def drawn_seven() -> bytes:
    """A 7 as the page sends it: white strokes on a black 280×280 canvas, PNG."""
    image = Image.new("L", (280, 280), 0)
    ImageDraw.Draw(image).line([(80, 60), (200, 58), (130, 235)], fill=255, width=22)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def model_microseconds(ckpt_path: Path, model: Path, calls: int = 2000) -> dict[str, float]:
    sys.path.insert(0, str(REPO_ROOT))
    from mnist_lightning.tools.serving.predictors import OnnxPredictor, TorchPredictor

    pixels = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    results = {}
    for predictor in (OnnxPredictor(model, threads=1), TorchPredictor.from_checkpoint(ckpt_path)):
        for _ in range(100):
            predictor(pixels)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            predictor(pixels)
            times.append(time.perf_counter() - start)
        results[predictor.runtime] = statistics.median(times) * 1e6
    return results


class Server:
    """`python -m mnist_lightning serve ... --port 0` in a subprocess; `url` once it listens."""

    def __init__(self, *args: str) -> None:
        command = [sys.executable, "-m", "mnist_lightning", "serve", *args, "--port", "0"]
        started = time.perf_counter()
        self.process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in self.process.stderr:
            if match := re.search(r"Uvicorn running on (http://\S+)", line):
                self.url = match.group(1)
                break
        else:
            raise RuntimeError(f"serve {' '.join(args)} did not start")
        self.startup_seconds = time.perf_counter() - started
        # Keep draining stderr, so that the server never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.process.stderr], daemon=True).start()

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def load(url: str, image: bytes, clients: int, duration: float) -> dict[str, float]:
    """`clients` threads posting `image` back to back for `duration` seconds."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients
    deadline = time.perf_counter() + duration

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as session:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = session.post("/predict", content=image, headers={"Content-Type": "image/png"})
                latencies[index].append(time.perf_counter() - start)
                failures[index] += response.status_code != 200

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    times = np.array([t for per_client in latencies for t in per_client])
    return {
        "requests": len(times),
        "failures": sum(failures),
        "requests_per_second": len(times) / elapsed,
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
    }


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def predict_once(ckpt_path: Path, image: bytes) -> float:
    """Seconds for `predict --data.predict_path` on one image, as a fresh process (what a user would run)."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "seven.png").write_bytes(image)
        command = [sys.executable, "-m", "mnist_lightning", "predict", f"--ckpt_path={ckpt_path.resolve()}"]
        command += [f"--data.predict_path={folder}/seven.png", "--trainer.logger=false"]
        start = time.perf_counter()
        subprocess.run(command, cwd=folder, capture_output=True, check=True, env=ENV)
        return time.perf_counter() - start


def load_average() -> list[float]:
    """The machine's load average over 1, 5 and 15 minutes, as `uptime` prints it."""
    return [round(load, 2) for load in os.getloadavg()]


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy since it started (every core; /proc/stat's first line, less idle
    and I/O wait)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (the servers, predict's process)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def markdown(results: dict) -> str:
    load, others = results["load_average"], results["other_processes"]
    lines = [
        f"Load average (1, 5, 15 min) before: {', '.join(map(str, load['before']))}; after: "
        f"{', '.join(map(str, load['after']))}; {os.cpu_count()} cores. Other processes took "
        f"{others['cpu_seconds']:.0f} CPU-seconds of the {others['available_cpu_seconds']:.0f} the run lasted "
        f"({others['share']:.0%}).",
        "",
        "| runtime | clients | requests/s | p50 ms | p99 ms | failed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["serve"]:
        lines.append(
            f"| {row['runtime']} | {row['clients']} | {row['requests_per_second']:.0f} | {row['p50_ms']:.1f} "
            f"| {row['p99_ms']:.1f} | {row['failures']} |"
        )
    model, startup = results["model_microseconds"], results["startup_seconds"]
    lines += [
        "",
        "| one image | seconds |",
        "|---|---:|",
        f"| `predict --data.predict_path one.png` (fresh process) | {results['predict_seconds']:.2f} |",
        f"| one request to a running `serve` (onnxruntime, median) | {results['one_request_seconds']:.4f} |",
        f"| the model alone, onnxruntime / torch (median) | {model['onnxruntime'] / 1e6:.6f} / "
        f"{model['torch'] / 1e6:.6f} |",
        f"| `serve` start-up, onnxruntime --model / torch --ckpt_path | {startup['onnxruntime']:.1f} / "
        f"{startup['torch']:.1f} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", type=Path, required=True, help="a checkpoint written by fit")
    parser.add_argument("--model", type=Path, required=True, help="the same checkpoint, exported with `export`")
    parser.add_argument("--duration", type=float, default=20, help="seconds of load per runtime and client count")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="folder for the JSON and Markdown")
    args = parser.parse_args(argv)
    image = drawn_seven()
    results: dict = {"load_average": {"before": load_average()}}
    started, busy, own = time.perf_counter(), busy_seconds(), own_seconds()
    results["model_microseconds"] = model_microseconds(args.ckpt_path, args.model)
    servers = {
        "onnxruntime": Server("--model", str(args.model)),
        "torch": Server("--ckpt_path", str(args.ckpt_path), "--runtime", "torch"),
    }
    try:
        results["startup_seconds"] = {runtime: server.startup_seconds for runtime, server in servers.items()}
        for server in servers.values():
            load(server.url, image, clients=1, duration=1)  # warm-up
        results["serve"] = []
        for clients in args.clients:
            for runtime in RUNTIMES:
                row = load(servers[runtime].url, image, clients, args.duration)
                results["serve"].append({"runtime": runtime, "clients": clients, **row})
                print(results["serve"][-1], flush=True)
        with httpx.Client(base_url=servers["onnxruntime"].url) as client:
            results["one_request_seconds"] = statistics.median(
                timed(lambda: client.post("/predict", content=image)) for _ in range(50)
            )
    finally:
        for server in servers.values():
            server.close()
    results["predict_seconds"] = predict_once(args.ckpt_path, image)
    results["load_average"]["after"] = load_average()
    available = (time.perf_counter() - started) * (os.cpu_count() or 1)
    others = max(0.0, (busy_seconds() - busy) - (own_seconds() - own))
    results["other_processes"] = {
        "cpu_seconds": others,
        "available_cpu_seconds": available,
        "share": others / available,
    }
    return write_report("serve", argv, results, markdown(results), args.output)


if __name__ == "__main__":
    main()
