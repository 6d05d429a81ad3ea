"""How long ``towerstream --help`` (and a subcommand's ``--help``) takes, against a bare interpreter.

A person's first contact with the tool is its help; it should print at once. The reference,
measured in the same run, is ``python -c pass`` (interpreter start), so the ratio says how much
the CLI adds to starting Python at all; a third figure, importing what a command itself needs
(``towerstream.settings`` + ``producers``: pydantic and kafka-python), shows what lazy imports
keep out of ``--help``.

    .venv/bin/python bench/cli_help.py --runs 15
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, add_run_args, begin, fmt, summarize, write_json  # noqa: E402

COMMANDS = {
    "python -c pass (reference)": [sys.executable, "-c", "pass"],
    "towerstream --help": [sys.executable, "-m", "towerstream.cli", "--help"],
    "towerstream demo --help": [sys.executable, "-m", "towerstream.cli", "demo", "--help"],
    "import settings + producers (what a command loads)": [sys.executable, "-c",
                                                             "import towerstream.settings, producers.producer"],
}


def wall_ms(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - t0) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15, help="runs of each command (interleaved)")
    add_run_args(ap)
    args = ap.parse_args(argv)
    env = begin(args.seed)
    for cmd in COMMANDS.values():  # warm the file cache once
        wall_ms(cmd)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):
        for name, cmd in COMMANDS.items():
            times[name].append(wall_ms(cmd))
    ref = summarize(times["python -c pass (reference)"])["median"]
    results = {}
    for name, vals in times.items():
        s = summarize(vals)
        results[name] = {**s, "ratio_to_reference": s["median"] / ref}
        print(f"{name:<52} {fmt(s, ' ms')}  x{s['median'] / ref:.2f} of the reference")
    write_json("cli_help", {"env": env, "runs": args.runs, "results": results}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
