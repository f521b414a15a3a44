#!/usr/bin/env bash
# Regenerate requirements.lock (what `make lock` runs): a throwaway venv resolves pyproject.toml's
# ranges (with its test extra) after torch is installed alone at the pinned CPU build, then every
# installed distribution is written with its exact version. Commit the result deliberately.
set -euo pipefail
cd "$(dirname "$0")/.."
torch_req=${TORCH:-torch==2.13.0}
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
