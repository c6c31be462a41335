"""Run every ``bench/bench_*.py`` (each in its own process) and write ``bench/results/README.md``.

    python bench/run_all.py                 # all of them
    python bench/run_all.py input vqvae     # only bench_input.py and bench_vqvae.py

Each script writes ``bench/results/<name>.json`` (see ``bench/common.py``); a script that fails
is reported in the table, not hidden. Progress and each script's own output go to the terminal.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from common import BENCH, RESULTS, machine, markdown


def main(argv: list[str]) -> int:
    scripts = sorted(BENCH.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in argv]
    RESULTS.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    for i, script in enumerate(scripts, 1):
        name = script.stem.removeprefix("bench_")
        print(f"[bench {i}/{len(scripts)}] {name} ...", flush=True)
        start = time.monotonic()
        proc = subprocess.run([sys.executable, str(script)], cwd=BENCH.parent, check=False)
        took = time.monotonic() - start
        print(
            f"[bench {i}/{len(scripts)}] {name}: exit {proc.returncode} in {took:.0f} s", flush=True
        )
        if proc.returncode != 0:
            failed.append(name)
    rows: list[dict[str, object]] = []
    for path in sorted(RESULTS.glob("*.json")):
        rows.extend(json.loads(path.read_text()).get("rows", []))
    table = markdown(rows)
    text = (
        "# Benchmark results\n\n"
        f"Written by `make bench` ({machine()}). Each ratio is ours / reference, both measured in "
        "the same process run, one after the other; the absolute numbers move with the machine's "
        "load, the ratios much less.\n\n"
        f"{table}\n"
    )
    if failed:
        text += f"\nFailed this run (see their output): {', '.join(failed)}\n"
    (RESULTS / "README.md").write_text(text)
    print(table)
    print(f"wrote {RESULTS / 'README.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
