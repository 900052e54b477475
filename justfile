# topgun-rs tasks. `just test` is exactly what CI runs.

# Format check, lints with warnings denied, then every test (unit, property, e2e, sim).
test:
    cargo fmt --all -- --check
    cargo clippy --all-targets --locked -- -D warnings
    cargo test --locked

# Start the server (embedded redb store in ./topgun-data, ws://127.0.0.1:8080).
serve *ARGS:
    cargo run --release -- serve {{ARGS}}

# Deterministic simulations; SEED=... replays one run, COUNT=... sweeps more seeds.
sim SEED="" COUNT="":
    TOPGUN_SIM_SEED="{{SEED}}" TOPGUN_SIM_COUNT="{{COUNT}}" cargo test --release --test sim -- --nocapture

# Regenerate the checked-in JSON Schemas in schemas/ from the protocol types.
schemas:
    cargo run -- schemas --out schemas

# Criterion benchmarks of the pure core and the ingress path (figures printed, not asserted).
bench-core:
    cargo bench --bench core

# A release server on a temporary redb store, then every workload for a short fixed time
# (sync with 100k records; `topgun bench sync` defaults to the full 1M).
# Load-test with `topgun bench`: tables to stdout, all results in target/bench-report.json.
bench PORT="18080":
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release --bin topgun
    bin=target/release/topgun
    secret="bench-secret-0123456789abcdef0123456789"
    url="ws://127.0.0.1:{{PORT}}"
    report=target/bench-report.json
    data=$(mktemp -d)
    ulimit -n 65536 2>/dev/null || true
    RUST_LOG=warn "$bin" serve --port {{PORT}} --store redb --data-dir "$data" \
        --jwt-secret "$secret" --max-connections 20000 &
    server=$!
    trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$data"' EXIT
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/{{PORT}}) 2>/dev/null && break
        sleep 0.1
    done
    rm -f "$report"
    common=(--url "$url" --secret "$secret" --json "$report")
    "$bin" bench "${common[@]}" --duration 10s --warmup 2s write --connections 200
    "$bin" bench "${common[@]}" --duration 10s --warmup 2s fanout --writers 4 --subscribers 50
    "$bin" bench "${common[@]}" --duration 5s connections --count 2000 --server-pid "$server"
    "$bin" bench "${common[@]}" sync --records 100000
    echo "results: $report"
