#!/usr/bin/env bash
# Regenerate requirements.lock (what `make lock` runs): a throwaway venv resolves pyproject.toml's
# ranges (with its test extra) after torch is installed alone at the pinned CPU build, then every
# installed distribution is written with its exact version. Then TransformerLens (the benchmarks'
# comparison, never in the lock) is added to the same venv and what it adds or changes is written
# to benchmarks/requirements-tl.txt, exact versions too. Commit the results deliberately.
set -euo pipefail
cd "$(dirname "$0")/.."
torch_req=${TORCH:-torch==2.13.0}
tl_req=${TL:-$(grep -m1 -E '^transformer-lens==' benchmarks/requirements-tl.txt || echo transformer-lens==3.9.0)}
dir=$(mktemp -d -t mechstudy-lock.XXXXXX)
trap 'rm -rf "$dir"' EXIT
python3 -m venv "$dir/venv"
py="$dir/venv/bin/python"
"$py" -m pip install -q --upgrade 'setuptools>=68'
"$py" -m pip install -q "$torch_req"
"$py" -m pip install -q -e '.[test]'
{
  echo "# The exact environment \`make demo\`, \`make test\` and CI install (pip install --no-deps -r)."
  echo "# Platform: $(uname -s) $(uname -m), Python $("$py" -c 'import platform; print(platform.python_version())')."
  echo "# Regenerate deliberately with \`make lock\` (tools/lock.sh) after changing pyproject.toml."
  echo "# tests/test_environment.py fails when what is installed differs from this file."
  "$py" -m pip freeze --all --exclude-editable | grep -viE '^(pip|wheel)==' | LC_ALL=C sort -f
} > requirements.lock
echo "wrote requirements.lock ($(grep -c '==' requirements.lock) packages)"

"$py" -m pip install -q "$tl_req"
{
  echo "# What TransformerLens adds to the locked environment, for the benchmarks' own venv"
  echo "# (benchmarks/run.py installs it with --no-deps into benchmarks/.venv-tl, which also sees the"
  echo "# project's packages). Written by \`make lock\` (tools/lock.sh) with requirements.lock; never edit."
  echo "$tl_req"
  "$py" -m pip freeze --all --exclude-editable | grep -viE '^(pip|wheel)==' | LC_ALL=C sort -f \
    | grep -vxF -f <(grep '==' requirements.lock) | grep -viE '^transformer-lens==' || true
} > benchmarks/requirements-tl.txt
echo "wrote benchmarks/requirements-tl.txt ($(grep -c '==' benchmarks/requirements-tl.txt) packages)"
