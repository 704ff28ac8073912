# Learntrail — `make help` lists the targets.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: help deps test-deps build up down test smoke lint bench fmt deploy-check test-cluster

# What `make up` runs (and the tools its banner names): one release build of these, nothing else.
RUN_BINS := --bin tracking-api --bin s3-rotator --bin shim-agent --bin learntrail-token --bin learntrail-admin --bin analytics-query --bin eagle-pinger --bin fake-eagle --bin notebook-scanner --bin ws-gateway --bin ws-send --bin keen-forwarder

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## Install what `make up` needs and is missing (nats-server, redis-server, Rust)
	@scripts/deps.sh

test-deps: ## Also install what only the tests need (ruby, Garage for S3)
	@scripts/deps.sh --test

build: deps ## Release build of what `make up` runs
	$(CARGO) build --release $(RUN_BINS)

up: build ## Start NATS, Redis and every service locally, print their URLs
	@scripts/up.sh

down: ## Stop what `make up` started
	@scripts/down.sh

test: test-deps ## Install what tests need and run every test, the `make up` smoke test and lint
	@# cargo-nextest runs the tests of every crate side by side; plain cargo test one crate at a time
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --all-targets --no-fail-fast --test-threads $${TEST_THREADS:-4}; \
	else \
	  $(CARGO) test --workspace --all-targets -- --test-threads=$${TEST_THREADS:-4}; \
	fi
	$(MAKE) --no-print-directory smoke lint deploy-check

smoke: test-deps ## Start the stack in a scratch folder, post the sample event, check it is stored and archived
	$(CARGO) build --bins
	LEARNTRAIL_BIN=$(CURDIR)/target/debug scripts/smoke.sh

deploy-check: ## Validate the image, compose, kustomize and helm artifacts offline (and that a broken one fails)
	scripts/deploy-check.sh
	scripts/deploy-check.sh --self-test

test-cluster: test-deps ## 3-node NATS cluster: a node killed mid-stream, every accepted event archived once
	$(CARGO) test -p learntrail-e2e --test cluster -- --nocapture

lint: ## fmt check + clippy -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

bench: test-deps ## Benchmarks with real servers; prints figures against targets
	$(CARGO) build --release --bins
	target/release/learntrail-bench all
