#!/usr/bin/env bash
# Run the test lanes in order and print a summary: lint, unit, integration, e2e, uml.
#   scripts/run-tests.sh            every lane (what `make test` and CI run)
#   scripts/run-tests.sh unit e2e   only those lanes
# PYCNI_REQUIRE_ALL=1: a lane whose tools are missing is an error, never a silent skip
# (tests/conftest.py). Each lane's output is also kept in build/test-logs/<lane>.log and its JUnit
# XML in build/test-results/<lane>.xml. Exit status: non-zero if any lane failed.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
export PYCNI_REQUIRE_ALL=1
VENV=${PYCNI_VENV:-.venv}
PY="$VENV/bin/python"
CTL="$VENV/bin/pycnictl"
LOGS=build/test-logs
RESULTS=build/test-results
mkdir -p "$LOGS" "$RESULTS"

ALL_LANES=(lint unit integration e2e uml)
LANES=("$@")
[ ${#LANES[@]} -gt 0 ] || LANES=("${ALL_LANES[@]}")

# Labs left by this repository's own earlier runs only (records carry the repo path).
# Only labs whose creating process is gone; PYCNI_LAB_CLEAN=0 skips this (a work tree shared with
# people running labs by hand).
clean_labs() {
  [ "${PYCNI_LAB_CLEAN:-1}" = 0 ] && return 0
  "$CTL" lab down --all || echo "warning: lab cleanup failed" >&2
}

lane_lint() {
  "$VENV/bin/ruff" check pycni daemons cni-plugin tests bench && "$VENV/bin/mypy"
}
lane_unit() {
  "$PY" -m pytest -q tests/unit --junitxml="$RESULTS/unit.xml"
}
lane_integration() {
  [ "$(id -u)" -eq 0 ] || { echo "integration lane needs root"; return 1; }
  "$PY" -m pytest -q tests/integration tests/contract -m "not uml" --junitxml="$RESULTS/integration.xml"
}
lane_e2e() {
  [ "$(id -u)" -eq 0 ] || { echo "e2e lane needs root"; return 1; }
  clean_labs
  "$PY" -m pytest -q tests/e2e -m "not uml" --junitxml="$RESULTS/e2e.xml"
  local rc=$?
  clean_labs
  return $rc
}
lane_uml() {
  # Runs every `uml`-marked test inside User-Mode-Linux (ipip); scripts/uml-run fails loudly when
  # the guest cannot boot or report a status, so this lane never passes by not running.
  UML_RESULTS="$REPO/$RESULTS/uml" UML_TIMEOUT=${UML_TIMEOUT:-1500} \
    ./scripts/uml-run "$PY" -m pytest -q -m uml tests --junitxml="$REPO/$RESULTS/uml/uml.xml"
}

declare -A STATUS SECS
overall=0
for lane in "${LANES[@]}"; do
  if ! declare -F "lane_$lane" >/dev/null; then
    echo "unknown lane '$lane' (lanes: ${ALL_LANES[*]})" >&2
    exit 64
  fi
  echo "================================ lane: $lane ================================"
  t0=$(date +%s)
  "lane_$lane" 2>&1 | tee "$LOGS/$lane.log"
  rc=${PIPESTATUS[0]}
  SECS[$lane]=$(( $(date +%s) - t0 ))
  if [ "$rc" -eq 0 ]; then STATUS[$lane]=PASS; else STATUS[$lane]="FAIL (exit $rc)"; overall=1; fi
  echo "---- lane $lane: ${STATUS[$lane]} in ${SECS[$lane]}s"
done

echo
echo "================================ summary ================================"
for lane in "${LANES[@]}"; do
  printf '  %-12s %-16s %5ss   log: %s\n' "$lane" "${STATUS[$lane]}" "${SECS[$lane]}" "$LOGS/$lane.log"
done
if [ "$overall" -eq 0 ]; then echo "ALL LANES PASSED"; else echo "SOME LANES FAILED"; fi
exit "$overall"
