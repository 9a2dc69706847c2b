# rbee developer recipes. `just` is optional: every recipe is a plain cargo command.

default: fmt lint test

# Format all crates.
fmt:
    cargo fmt --all

# Clippy with warnings as errors.
lint:
    cargo clippy --workspace --all-targets -- -D warnings

# The full test suite (needs grpcurl on PATH for the end-to-end tests).
test:
    cargo test --workspace

# What CI runs.
ci:
    bash .ci/run

# Run a hive on this machine (NVML if present, else CPU only).
hive *ARGS:
    cargo run --release --bin hive -- serve {{ARGS}}

# Run a hive with the built-in simulated GPUs.
hive-demo *ARGS:
    cargo run --release --bin hive -- serve --demo {{ARGS}}

# Print this machine's capabilities and one sample.
probe *ARGS:
    cargo run --release --bin hive -- probe {{ARGS}}

# Benchmarks (see docs/BENCHMARKS.md).
bench:
    cargo bench --workspace

# The one-command demo: a queen with a hive in the same process.
demo:
    cargo run --release --bin queen -- serve --local-hive

# A development CA and certificates for a mutual-TLS fleet, in ./certs.
certs *ARGS:
    cargo run --release --bin queen -- certs --out certs {{ARGS}}

# Fuzz decode + validate + apply for a minute (needs `cargo install cargo-fuzz`).
fuzz:
    cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run stream_ingest -- -max_total_time=60
