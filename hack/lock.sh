#!/usr/bin/env bash
# Re-pin: constraints.txt from the tested .venv, and constraints-gpu.txt (the GPU trainer image)
# from pip's resolver for tensorflow[and-cuda] under the same pins. Run after changing dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
{
  echo "# Exact versions tested (pip freeze of .venv); install with: pip install -c constraints.txt -e '.[operator,trainer,export,dev]'"
  "$py" -m pip freeze --exclude-editable | grep -v -i '^mlops-operator'
} > constraints.txt
report="$(mktemp)"
grep -v -i -e '^tensorflow[-_]cpu==' -e '^#' constraints.txt > "$report.in"
tf="$(grep -i '^tensorflow[-_]cpu==' constraints.txt | cut -d= -f3)"
"$py" -m pip install --dry-run --ignore-installed --quiet --report "$report" -c "$report.in" "tensorflow[and-cuda]==${tf}"
{
  echo "# constraints.txt with TensorFlow's CUDA wheels instead of tensorflow-cpu (images/trainer, VARIANT=gpu)"
  cat "$report.in"
  "$py" -c 'import json, sys
report = json.load(open(sys.argv[1]))
for item in sorted(report["install"], key=lambda i: i["metadata"]["name"]):
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if name.startswith(("nvidia-", "tensorflow")):
        print(f"{name}=={version}")' "$report"
} > constraints-gpu.txt
rm -f "$report" "$report.in"
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) pins) and constraints-gpu.txt ($(grep -vc '^#' constraints-gpu.txt) pins)"
