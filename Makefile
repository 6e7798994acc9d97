# ess tasks. `make help` lists them.
CARGO ?= cargo
ESS := ./target/release/ess
# One build for everything: `--all-targets` resolves the dependencies' features with the
# dev-dependencies, as `cargo test` and clippy do, so the tests, the lint and `ess` itself share
# one set of compiled crates. Without it `cargo build` picks other features and recompiles the
# workspace, and `cargo test` recompiles it again.
BUILD_FLAGS := --release --workspace --all-targets

.PHONY: help demo test test-only build stack-up stack-down lint fmt bench

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## Build every crate and test (release profile, one build shared by tests, lint, demo)
	$(CARGO) build $(BUILD_FLAGS)

demo: build ## The main job: stack up, ingest + sinks, load, verified report
	$(ESS) demo

test: build stack-up test-only ## Everything: stack up (installs what is missing), unit + integration tests

test-only: build ## Unit + integration tests against an already running stack
	$(CARGO) test --release --workspace

stack-up: build ## Start ZooKeeper, 2x2 ClickHouse and the broker (installs what is missing)
	$(ESS) stack up --profile cluster

stack-down: ## Stop everything the stack started
	$(ESS) stack down

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(BUILD_FLAGS) -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

bench: build ## Side-by-side benchmarks (see BENCHMARKS.md)
	bash bench/run
