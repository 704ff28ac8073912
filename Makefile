# Learntrail — `make help` lists the targets.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: help deps build up down test smoke lint bench fmt

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## Install what is missing (apt packages, Rust)
	@scripts/deps.sh

build: deps ## Build every service (release)
	$(CARGO) build --release --bins

up: build ## Start NATS, Redis and every service locally, print their URLs
	@scripts/up.sh

down: ## Stop what `make up` started
	@scripts/down.sh

test: deps ## Install what tests need and run every test, the `make up` smoke test and lint
	$(CARGO) test --workspace --all-targets -- --test-threads=$${TEST_THREADS:-4}
	$(MAKE) --no-print-directory smoke lint

smoke: deps ## Start the stack in a scratch folder, post the sample event, check it is stored and archived
	$(CARGO) build --bins
	LEARNTRAIL_BIN=$(CURDIR)/target/debug scripts/smoke.sh

lint: ## fmt check + clippy -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

bench: build ## Benchmarks with real servers; prints figures against targets
	target/release/learntrail-bench all
