#!/usr/bin/env bash
# Build the fuzz targets and run each for SECONDS (default 5), from their seed corpus.
#
#   native/fuzz/run.sh [SECONDS] [TARGET...]     # every target unless some are named
#
# Exits non-zero if a target fails to build, or finds a crash, a panic, a timeout or an OOM
# (the input is kept in native/fuzz/artifacts/<target>/). Works from any directory. Needs
# python3 and zstd (for the seeds), cargo-fuzz (installed from crates.io when missing), and a
# nightly toolchain, or else the stable one run with RUSTC_BOOTSTRAP=1.
# Each target's libFuzzer output goes to native/fuzz/target/logs/<target>.log; the end of it is
# printed when the target fails.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")" || exit 2

SECONDS_PER_TARGET="${1:-5}"
shift $(( $# > 0 ? 1 : 0 ))
ALL_TARGETS=(tar_walk zstd stream age pg_pages innodb wal sqlite_wal sqlite_collect)
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi
case "$SECONDS_PER_TARGET" in
  ''|*[!0-9]*) echo "run.sh: SECONDS must be a whole number, not '$SECONDS_PER_TARGET'" >&2; exit 2 ;;
esac

# cargo fuzz needs nightly flags (sanitizers, coverage instrumentation)
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  CARGO=(cargo +nightly)
else
  echo "run.sh: no nightly toolchain; using the stable one with RUSTC_BOOTSTRAP=1"
  export RUSTC_BOOTSTRAP=1
  CARGO=(cargo)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "run.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked || exit 2
fi

for target in "${TARGETS[@]}"; do
  if [ -z "$(ls -A "corpus/$target" 2>/dev/null)" ]; then
    python3 seed.py || exit 2
    break
  fi
done

echo "run.sh: building the fuzz targets"
# all of them (the same flags as `fuzz run`: each run below then finds them built)
if ! "${CARGO[@]}" fuzz build; then
  echo "run.sh: the fuzz targets do not build" >&2
  exit 2
fi

mkdir -p target/logs
failed=()
for target in "${TARGETS[@]}"; do
  log="target/logs/$target.log"
  start=$(date +%s)
  touch "target/logs/$target.start"
  "${CARGO[@]}" fuzz run "$target" "corpus/$target" -- \
      -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=1024 -max_len=1048576 -timeout=60 \
      -print_final_stats=1 >"$log" 2>&1
  status=$?
  took=$(( $(date +%s) - start ))
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  if [ "$status" -eq 0 ]; then
    echo "run.sh: $target: ok (${runs:-?} runs, ${cov:-cov: ?}, ${took}s)"
  else
    failed+=("$target")
    echo "run.sh: $target: FAILED (exit $status, ${took}s); from $log:"
    # the panic or sanitizer report and its backtrace, not the input's bytes cargo fuzz prints
    first=$(grep -n -m1 -E "panicked at|==ERROR|ERROR: libFuzzer|SUMMARY" "$log" | cut -d: -f1)
    sed -n "${first:-1},\$p" "$log" | grep -v -E '^\s*\[[0-9, ]*\]\s*$' | cut -c1-300 | head -n 70
    # CI keeps only this output, not the files: print each new input small enough to paste back
    find "artifacts/$target" -type f -newer "target/logs/$target.start" 2>/dev/null | while read -r kept; do
      size=$(stat -c %s "$kept")
      echo "run.sh:   kept: native/fuzz/$kept ($size bytes)"
      if [ "$size" -le 65536 ]; then
        echo "run.sh:   its bytes in base64, to the end line (restore with: base64 -d > FILE):"
        base64 -w 100 "$kept"
        echo "run.sh:   end of $kept"
      fi
    done
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "run.sh: failed: ${failed[*]}" >&2
  echo "run.sh: reproduce with: cd native/fuzz && ${CARGO[*]} fuzz run TARGET artifacts/TARGET/FILE" >&2
  exit 1
fi
echo "run.sh: all ${#TARGETS[@]} targets ran ${SECONDS_PER_TARGET}s each without a failure"
