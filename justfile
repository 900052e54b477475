# topgun-rs tasks. `just test` is exactly what CI runs.

# Format check, lints with warnings denied, then every test (unit, property, e2e, sim).
test:
    cargo fmt --all -- --check
    cargo clippy --all-targets --locked -- -D warnings
    cargo test --locked

# Start the server (embedded redb store in ./topgun-data, ws://127.0.0.1:8080).
serve *ARGS:
    cargo run --release -- serve {{ARGS}}

# Deterministic simulations. `just sim` sweeps COUNT seeds (default 200) per scenario from
# START (default: derived from the time) and prints seeds/s; SEED=... replays one run (a
# failure prints the exact command); FILTER narrows to scenario tests; TRACE=1 prints histories.
sim SEED="" COUNT="200" START="" FILTER="scenarios" TRACE="":
    #!/usr/bin/env bash
    set -euo pipefail
    start="{{START}}"
    if [ -z "{{SEED}}" ] && [ -z "$start" ]; then start="$(date +%s)000"; fi
    echo "sim: seed={{SEED}} count={{COUNT}} start=$start filter={{FILTER}}"
    TOPGUN_SIM_SEED="{{SEED}}" TOPGUN_SIM_COUNT="{{COUNT}}" TOPGUN_SIM_START="$start" \
        TOPGUN_SIM_TRACE="{{TRACE}}" \
        cargo test --test sim "{{FILTER}}" -- --nocapture --test-threads 2 2>&1 \
        | grep -E "seeds/s|failed on|replay:|^  |panicked|test result"

# Regenerate the checked-in JSON Schemas in schemas/ from the protocol types.
schemas:
    cargo run -- schemas --out schemas

# Criterion benchmarks of the pure core and the ingress path (figures printed, not asserted).
bench:
    cargo bench --bench core
