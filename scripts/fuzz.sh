#!/bin/sh
# Runs every fuzz target for SECONDS each (`make fuzz`, FUZZ_SECONDS), from
# its corpus (fuzz/corpus, kept between runs) and the seeds in fuzz/seeds,
# with cargo-fuzz on the stable toolchain (--sanitizer none). Prints the
# executions and crashes per target; fails if any target crashed (the
# input is in fuzz/artifacts/TARGET: make it a regression test).
set -eu
seconds=${1:-600}
cd "$(dirname "$0")/.."
# --debug: a quicker install; cargo-fuzz only drives the build and libFuzzer.
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --debug
cargo fuzz build --sanitizer none
failed=0
for target in line_protocol remote_write batch policies_toml; do
    mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target"
    log=$(mktemp)
    if cargo fuzz run --sanitizer none "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        crashes=0
    else
        crashes=1
        failed=1
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -5 >&2
    fi
    runs=$(grep -oE "stat::number_of_executed_units: *[0-9]+" "$log" | grep -oE "[0-9]+$" || echo 0)
    echo "fuzz $target: $runs executions in ${seconds}s, $crashes crashes"
    rm -f "$log"
done
exit "$failed"
