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

# Criterion benchmarks of the pure core and the ingress path (figures printed, not asserted).
bench:
    cargo bench --bench core
