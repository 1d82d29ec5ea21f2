#!/usr/bin/env bash
# The Python tests (python/tests: the `draftwire` producer package, against golden vectors and
# real jobs). Runs this checkout's package (PYTHONPATH=python), installing it with pip first
# when no draftwire package is installed at all (scripts/setup.sh does that on a fresh machine).
# Closes with the line 'python: N passed, N failed, N skipped' (.ci/run counts it); exit status
# is pytest's (a missing pytest is a failure, not a skip).
set -uo pipefail
cd "$(dirname "$0")/.."

summary() { echo "python: $1 passed, $2 failed, $3 skipped"; }
if ! python3 -c "import pytest" >/dev/null 2>&1; then
  echo "test-python: pytest is missing (bash scripts/setup.sh installs it)"
  summary 0 1 0
  exit 1
fi
if ! python3 -c "import draftwire" >/dev/null 2>&1; then
  pip_index=()
  [ -d /opt/pypi/simple ] && pip_index=(--index-url file:///opt/pypi/simple --extra-index-url file:///opt/pypi-more/simple)
  echo "test-python: pip install ./python"
  python3 -m pip install -q "${pip_index[@]}" ./python || { summary 0 1 0; exit 1; }
fi

log=$(mktemp)
PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" timeout "${DRAFTWIRE_PYTEST_TIMEOUT:-900}" \
  python3 -m pytest python/tests -q -p no:cacheprovider "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
last=$(grep -E '[0-9]+ (passed|failed|error|errors|skipped)' "$log" | tail -1)
n() { echo "$last" | grep -Eo "[0-9]+ $1" | grep -Eo '[0-9]+' | head -1; }
passed=$(n passed); failed=$(n failed); errors=$(n 'errors?'); skipped=$(n skipped)
passed=${passed:-0}; failed=$(( ${failed:-0} + ${errors:-0} )); skipped=${skipped:-0}
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi  # a crash or timeout that ran no test
rm -f "$log"
summary "$passed" "$failed" "$skipped"
exit "$rc"
