#!/usr/bin/env bash
# Runs every native Go fuzz target of the repository (every `func FuzzX(f *testing.F)` under
# libs, services and tools) for the given time each, one after the other: `go test -fuzz` takes
# one target at a time. A failing input is written to the package's testdata/fuzz/FuzzX/ (commit
# it as a regression seed once fixed) and fails the run. Prints one summary line per target.
#
#   scripts/fuzz.sh 60s            # every target for 60 s
#   scripts/fuzz.sh 3s FuzzDecode  # only targets whose name matches the pattern
set -euo pipefail

fuzztime="${1:-60s}"
pattern="${2:-.}"
cd "$(dirname "$0")/.."

failed=0
while IFS=: read -r file name; do
  dir="./$(dirname "$file")"
  [[ "$name" =~ $pattern ]] || continue
  log=$(mktemp)
  start=$(date +%s)
  if go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "$dir" >"$log" 2>&1; then
    result=ok
  else
    result=FAIL
    failed=1
  fi
  # The last progress line carries the totals: "elapsed: 60s, execs: 123456 (2057/sec), ..."
  # (A short run may print no progress or no "new interesting" line: || true, or set -e would
  # end the script there, silently.)
  execs=$(grep -o 'execs: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
  # elapsed is "57s" or "4m0s"; in seconds:
  elapsed=$(grep -Eo 'elapsed: ([0-9]+h)?([0-9]+m)?[0-9]+s' "$log" | tail -1 | cut -d' ' -f2 |
    awk -F'[hms]' '{ if (NF == 4) print $1*3600 + $2*60 + $3; else if (NF == 3) print $1*60 + $2; else print $1 }' || true)
  interesting=$(grep -o 'total: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
  rate="-"
  if [ -n "${execs:-}" ] && [ -n "${elapsed:-}" ] && [ "$elapsed" -gt 0 ]; then
    rate=$(( execs / elapsed ))
  fi
  printf '%-4s %-55s %-18s execs %-9s %7s/s corpus %-5s wall %ss\n' "$result" "$dir" "$name" \
    "${execs:--}" "$rate" "${interesting:--}" "$(( $(date +%s) - start ))"
  if [ "$result" = FAIL ]; then
    sed 's/^/    /' "$log" | tail -40
  fi
  rm -f "$log"
done < <(grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' libs services tools e2e | sed 's/:func /:/' | sort)
exit "$failed"
