#!/usr/bin/env bash
# Bounded fuzzing of the wire: runs every cargo-fuzz target in fuzz/ for SECONDS_PER_TARGET
# (default 30) and fails if any of them finds a crash.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
#
# Installs cargo-fuzz (`cargo install --locked cargo-fuzz`) if `cargo fuzz` is missing. Runs on
# stable Rust: `-s none` turns off the sanitizers, which need nightly; `-a` keeps debug assertions
# and overflow checks on. Each target starts from its committed seeds (fuzz/seeds/<target>) and
# grows its own corpus in fuzz/corpus/<target> (ignored by git), so repeated runs go deeper.
# Crashes are saved under fuzz/artifacts/<target>/; libFuzzer's output goes to
# fuzz/target/fuzz-logs/<target>.log. Prints one line per target with libFuzzer's final figures.
# CI (.ci/run) calls it with 20 seconds; see fuzz/README.md for longer runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-30}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

targets=(peer_request peer_answer messages values batch)
logs=fuzz/target/fuzz-logs
mkdir -p "$logs"
failed=()

# The fuzz crate is outside the workspace, so `cargo fmt --all` does not see it.
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

# Build every target first, so the time limit is spent fuzzing and a build error fails early.
cargo fuzz build -s none -a

for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    seeds="fuzz/seeds/$target"
    mkdir -p "$corpus" "$seeds"
    log="$logs/$target.log"
    status=0
    cargo fuzz run -s none -a "$target" "$corpus" "$seeds" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    # libFuzzer's last status line ("#N DONE cov: ... exec/s: ...") and "Done N runs in S second(s)".
    runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    stats=$(grep -E '^#[0-9]+[[:space:]]+(DONE|NEW|REDUCE|pulse|INITED)' "$log" | tail -n 1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$stats")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$stats")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$stats")
    per_second=$(sed -n 's/.* exec\/s: \([0-9]*\).*/\1/p' <<<"$stats")
    if [ "$status" -eq 0 ] && [ -n "$runs" ]; then
        echo "fuzz $target: ok, ${runs} executions in ${seconds} s (${per_second:-?} exec/s), cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}, 0 crashes"
    else
        echo "fuzz $target: FAILED (exit $status) after ${runs:-?} executions; last lines of $log:" >&2
        tail -n 60 "$log" >&2
        grep -E 'Test unit written to|artifact_prefix' "$log" >&2 || true
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
