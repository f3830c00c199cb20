"""Regenerate the README's benchmark table from ``benchmarks/results/*.json`` (between its bench markers).

One row per result file: the benchmark, what it measures, its result and the machine it ran on, as the
benchmark wrote them (``_results.save``). A benchmark script with no result file yet gets a row saying so.
``--check`` changes nothing and exits 1 when the README's table differs from the files.

    .venv/bin/python benchmarks/readme_table.py [--check]
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
# The table's order; result files not named here follow in alphabetical order.
ORDER = ["startup", "load_ext", "serving", "proxy_vllm", "proxy_synthetic", "proxy_synthetic_burst", "structured_output",
         "adapters", "quickstart_memory", "gpu_detection"]
NOT_BENCHMARKS = {"_results.py", "readme_table.py"}


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _machine(data: dict) -> str:
    m = data.get("machine", {})
    cpu = re.sub(r"\((R|TM)\)|\s+(CPU|Processor)\b", "", m.get("cpu_model") or "").strip() or "CPU"
    where = f"{m.get('cpu_count')} x {cpu}"
    if m.get("gpus"):
        where += ", " + ", ".join(m["gpus"])
    return f"{where}; {str(data.get('when', ''))[:10]}"


def _docline(script: Path) -> str:
    doc = ast.get_docstring(ast.parse(script.read_text())) or script.stem
    return doc.strip().splitlines()[0]


def rows() -> list[str]:
    """Return the table's rows (header first), from the result files and the scripts that have none."""
    files = {path.stem: json.loads(path.read_text()) for path in sorted((HERE / "results").glob("*.json"))}
    names = [n for n in ORDER if n in files] + sorted(n for n in files if n not in ORDER)
    lines = ["| benchmark | what | result | measured on |", "|---|---|---|---|"]
    covered = set()
    for name in names:
        data = files[name]
        covered.update(re.findall(r"(\w+\.py)", data.get("command", "")))
        missing = [key for key in ("what", "result") if not data.get(key)]
        if missing:  # said in the table too, so that a row never goes missing unnoticed
            print(f"readme_table: results/{name}.json has no {' or '.join(missing)}: save it through "
                  "benchmarks/_results.save", file=sys.stderr)
            lines.append(f"| `{name}` | | results/{name}.json has no {' or '.join(missing)} (not saved through "
                         f"benchmarks/_results.save) | {_cell(_machine(data))} |")
            continue
        lines.append(f"| {_cell(data.get('title') or name)} | {_cell(data['what'])} | {_cell(data['result'])} | "
                     f"{_cell(_machine(data))} |")
    for script in sorted(HERE.glob("*.py")):
        runnable = '__name__ == "__main__"' in script.read_text()  # not a module another benchmark imports
        if runnable and script.name not in NOT_BENCHMARKS and script.name not in covered:
            lines.append(f"| `{script.name}` | {_cell(_docline(script))} | no result file yet: "
                         f"`python benchmarks/{script.name}` writes one | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's table is not up to date")
    args = parser.parse_args()
    text = README.read_text()
    if text.count(START) != 1 or text.count(END) != 1:
        sys.exit(f"readme_table: README.md needs one {START} and one {END} around the benchmark table")
    head, rest = text.split(START)
    _old, tail = rest.split(END)
    updated = f"{head}{START}\n" + "\n".join(rows()) + f"\n{END}{tail}"
    if args.check:
        if updated != text:
            sys.exit("readme_table: README.md's benchmark table differs from benchmarks/results/; "
                     "run python benchmarks/readme_table.py")
        return
    README.write_text(updated)
    print(f"README.md: benchmark table regenerated from {HERE / 'results'}")


if __name__ == "__main__":
    main()
