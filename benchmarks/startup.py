"""What a CLI process spends before it trains: importing the package (torch, Lightning, torchmetrics) and building and
parsing its LightningCLI, in fresh processes, as every `python -m mnist_lightning ...` does.

Two ways of building the command line are compared, alternating, each in a process of its own:

1. `one-parser`: `python -m mnist_lightning fit ...` as it runs: only `fit`'s parser is built
   (`MNISTLightningCLI.subcommands`).
2. `four-parsers`: LightningCLI's default, a parser for each of fit, validate, test and predict.

Reported: CPU seconds (user + system) of the imports and of building and parsing `fit`'s command line, medians over
the repeats. Nothing is trained and no data is read (`build_cli(..., parse_only=True)`). Writes Markdown and JSON
under benchmarks/results/.

    python benchmarks/startup.py --repeats 5     # under a minute on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench import REPO_ROOT, RESULTS_DIR, write_report

KINDS = ("one-parser", "four-parsers")

CHILD = """
import json, os, sys
def cpu():  # this process's and its children's: jsonargparse starts a `python -c` to read sys.path
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
start = cpu()
import mnist_lightning.cli as cli
imported = cpu()
if sys.argv[1] == "four-parsers":
    cli.named_subcommand = lambda args: None  # as LightningCLI does by default
cli.build_cli(["fit", "--trainer.max_epochs=1"], parse_only=True)
print(json.dumps({"imports": imported - start, "parse": cpu() - imported}))
"""


def measure(kind: str) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, kind], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.splitlines()[-1])


def markdown_table(summary: dict[str, dict[str, float]]) -> str:
    lines = ["| command line | imports, CPU s (median) | build and parse `fit`, CPU s (median) |"]
    lines.append("| --- | --- | --- |")
    lines += [f"| {kind} | {row['imports']:.2f} | {row['parse']:.3f} |" for kind, row in summary.items()]
    saved = summary["four-parsers"]["parse"] - summary["one-parser"]["parse"]
    lines += ["", f"Building only the named subcommand's parser saves **{saved:.2f} s** of CPU per process."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="processes of each kind, alternating")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="folder for the JSON and Markdown")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    for repeat in range(args.repeats):
        for kind in KINDS[repeat % 2 :] + KINDS[: repeat % 2]:  # each repeat starts with the other kind
            runs[kind].append(measure(kind))
    summary = {
        kind: {step: statistics.median(run[step] for run in kind_runs) for step in ("imports", "parse")}
        for kind, kind_runs in runs.items()
    }
    results = {"repeats": args.repeats, "cpu_seconds_median": summary, "runs": runs}
    return write_report("startup", argv, results, markdown_table(summary), args.output)


if __name__ == "__main__":
    main()
