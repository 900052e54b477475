# topgun-rs tasks. `just test` is exactly what CI runs.

# Format check, lints with warnings denied, then every test (unit, property, e2e, sim).
test:
    cargo fmt --all -- --check
    cargo clippy --all-targets --locked -- -D warnings
    cargo test --locked

# Start the server (embedded redb store in ./topgun-data, ws://127.0.0.1:8080).
serve *ARGS:
    cargo run --release -- serve {{ARGS}}

# Deterministic simulations: `just sim [SEED=n] [COUNT=n] [START=n] [FILTER=name] [TRACE=1]`.
# Without SEED it sweeps COUNT seeds (default 200) per scenario from START (default: derived
# from the time) and prints seeds/s; SEED=n replays one run (a failure prints that command);
# FILTER narrows to scenario tests by name; TRACE=1 prints every history.
sim *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    SEED=""; COUNT="200"; START=""; FILTER="scenarios"; TRACE=""
    for arg in {{ARGS}}; do
        case "$arg" in
            SEED=*|COUNT=*|START=*|FILTER=*|TRACE=*) declare "$arg" ;;
            *) echo "unknown argument: $arg" >&2; exit 2 ;;
        esac
    done
    if [ -z "$SEED" ] && [ -z "$START" ]; then START="$(date +%s)000"; fi
    echo "sim: seed=$SEED count=$COUNT start=$START filter=$FILTER"
    TOPGUN_SIM_SEED="$SEED" TOPGUN_SIM_COUNT="$COUNT" TOPGUN_SIM_START="$START" \
        TOPGUN_SIM_TRACE="$TRACE" \
        cargo test --test sim "$FILTER" -- --nocapture --test-threads 2 2>&1 \
        | grep -E "seeds/s|won|lost with|failed on|replay:|^  |panicked|test result"

# Regenerate the checked-in JSON Schemas in schemas/ from the protocol types.
schemas:
    cargo run -- schemas --out schemas

# Criterion benchmarks of the pure core, the ingress path and the server's whole write path
# over in-memory streams (figures printed, not asserted).
bench-core:
    cargo bench --bench core --bench server

# First the floor (`topgun floor`, a server that acks and does nothing: what the machine and
# the generator cost on their own, in target/bench-floor.json), then a release server on a
# temporary redb store and every workload for a short fixed time (sync with 100k records;
# `topgun bench sync` defaults to the full 1M).
# Load-test with `topgun bench`: tables to stdout, all results in target/bench-report.json.
bench PORT="18080":
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release --bin topgun
    bin=target/release/topgun
    secret="bench-secret-0123456789abcdef0123456789"
    url="ws://127.0.0.1:{{PORT}}"
    report=target/bench-report.json
    ulimit -n 65536 2>/dev/null || true
    wait_for_port() {
        for _ in $(seq 100); do
            (exec 3<>/dev/tcp/127.0.0.1/{{PORT}}) 2>/dev/null && return
            sleep 0.1
        done
    }
    "$bin" floor --port {{PORT}} &
    floor=$!
    trap 'kill "$floor" 2>/dev/null || true' EXIT
    wait_for_port
    rm -f target/bench-floor.json
    floor_args=(--url "$url" --json target/bench-floor.json --duration 10s --warmup 2s)
    "$bin" bench "${floor_args[@]}" --threads 2 write --connections 200 --wait --rate 150000 --server-pid "$floor"
    "$bin" bench "${floor_args[@]}" write --connections 200 --server-pid "$floor"
    kill "$floor"; wait "$floor" 2>/dev/null || true
    data=$(mktemp -d)
    RUST_LOG=warn "$bin" serve --port {{PORT}} --store redb --data-dir "$data" \
        --jwt-secret "$secret" --max-connections 20000 &
    server=$!
    trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$data"' EXIT
    wait_for_port
    rm -f "$report"
    common=(--url "$url" --secret "$secret" --json "$report")
    # First, on the fresh server: the heap the write workloads free is kept for reuse, and
    # connections opened later would reuse it without growing the resident set they count.
    "$bin" bench "${common[@]}" --duration 5s connections --count 10000 --server-pid "$server"
    "$bin" bench "${common[@]}" --duration 10s --warmup 2s write --connections 200 --wait --server-pid "$server"
    # Latency at the target load: two generator threads, so one descheduled thread does not
    # hold up all 200 connections' acks.
    "$bin" bench "${common[@]}" --threads 2 --duration 10s --warmup 2s write --connections 200 --wait --rate 150000 --server-pid "$server"
    "$bin" bench "${common[@]}" --duration 10s --warmup 2s write --connections 200 --server-pid "$server"
    "$bin" bench "${common[@]}" --duration 10s --warmup 2s fanout --writers 4 --subscribers 50
    "$bin" bench "${common[@]}" sync --records 100000
    echo "results: $report (the floor: target/bench-floor.json)"
