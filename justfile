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
bench:
    cargo bench --bench core
