# vpod: `make demo` builds everything and runs a micro-VM; `make test` runs every test.
# Guest-booting tests run directly on hosts whose /dev/kvm is kvm_intel/kvm_amd, and inside
# the emulated KVM host (tests/kvm-host) elsewhere; tests/guest-mode decides and says why.

SHELL := /bin/bash
export VPOD_CACHE_DIR ?= /var/cache/vpod
CARGO ?= cargo
BUILD := build

# Debian packages the build and the tests need on a fresh machine.
APT_PACKAGES := build-essential bc bison flex libelf-dev libssl-dev xz-utils cpio kmod \
	linux-source-6.12 busybox-static qemu-system-x86 erofs-utils e2fsprogs ca-certificates runc crun \
	docker-registry skopeo apache2-utils openssl golang-go golang-google-grpc-dev \
	containernetworking-plugins iptables iproute2 containerd
# The peers `make bench` measures besides vpod (not needed to build or test).
BENCH_PACKAGES := umoci

.PHONY: all deps kernel stub test-initrd initrd image kvm-host rust test lint bench demo fuzz clean

all: deps kernel stub test-initrd rust initrd image

deps:
	@missing=$$(for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing" $$missing; \
	  apt-get update -q >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	fi

kernel: deps
	kernel-config/build.sh

stub:
	tests/stub/build.sh

test-initrd: deps
	tests/initramfs/build.sh

rust:
	$(CARGO) build --release --workspace --bins
	$(CARGO) build --release -p vpod-vmm --features seccomp-probe --target-dir target/seccomp-probe

# vpod-init (static) as /init: build/pod-initrd.img, what pod VMs boot, and
# build/initrd.img, the same plus busybox for shell commands in the standalone VMM.
initrd: deps
	guest-init/build-initrd.sh

# The embedded default image: a reproducible two-layer OCI layout from busybox-static.
image: rust
	target/release/vpod-default-image $(BUILD)/images/default >/dev/null

# The emulated KVM host's kernel and initramfs (cached) and its runner.
kvm-host: deps rust
	tests/kvm-host/prepare >/dev/null

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Every test: unit, VMM-core on this machine's KVM, and end-to-end through the mode that
# tests/guest-mode picks. Retries of the emulated host are counted and printed at the end.
test: all kvm-host lint
	@mode=$$(tests/guest-mode); echo "make test: guest-booting tests run $$mode"
	@: > $(BUILD)/kvm-host-retries.log
	@export VPOD_KVM_HOST_RETRY_LOG=$(CURDIR)/$(BUILD)/kvm-host-retries.log; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast --test-threads 2; \
	else \
	  $(CARGO) test --workspace --no-fail-fast -- --test-threads 2; \
	fi; status=$$?; \
	n=$$(wc -l < $(BUILD)/kvm-host-retries.log); \
	echo "make test: emulated KVM host retries in this run: $$n"; \
	[ "$$n" = 0 ] || sed 's/^/  retry: /' $(BUILD)/kvm-host-retries.log; \
	exit $$status

# Coverage-guided fuzzing: each libFuzzer target in fuzz/ (cargo-fuzz on the nightly
# toolchain, installed if missing) for FUZZ_SECONDS, from its committed corpus and
# regressions; new inputs go to fuzz/corpus/<target>, crashes to fuzz/artifacts/<target>.
# Not part of `make test`, which replays the corpora on stable (tests/fuzz-targets).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= $(basename $(notdir $(wildcard fuzz/fuzz_targets/*.rs)))

fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@failed=; for t in $(FUZZ_TARGETS); do \
	  dirs=fuzz/corpus/$$t; [ -d fuzz/regressions/$$t ] && dirs="$$dirs fuzz/regressions/$$t"; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	  $(CARGO) +nightly fuzz run $$t $$dirs -- -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
	    || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: crashes in$$failed (inputs under fuzz/artifacts/)"; exit 1; fi

# Runs a command prefixed by the emulated KVM host's runner where guests cannot boot here:
# the shell side of the decision Rust tests get from vpod_e2e::guest_host (both ask
# tests/guest-mode).
IN_GUEST_HOST = mode=$$(tests/guest-mode 2>/dev/null); \
	run=(); [ "$$mode" = emulated ] && run=(tests/kvm-host/run --)

demo: all kvm-host
	@$(IN_GUEST_HOST); echo "demo: guests boot $$mode here ($$(tests/guest-mode 2>&1 >/dev/null | sed 's/^guest-mode: //'))"; \
	echo "demo 1/3: the micro-VM alone: vpod-vmm --vcpus 2 --memory 256 --timings -- sh -c '...'"; \
	"$${run[@]}" target/release/vpod-vmm --vcpus 2 --memory 256 --timings -- \
	  sh -c 'echo hello from $$(hostname), a vpod micro-VM: Linux $$(uname -r) with $$(nproc) vCPUs; exit 7'; \
	echo "demo 1/3: the VMM exited with $$? (the guest command's status)"; \
	echo "demo 2/3: a container from the embedded image ($(BUILD)/images/default): vpod run --timings -- sh -c '...'"; \
	"$${run[@]}" sh -c 'R=$$(mktemp -d /tmp/vpod-demo.XXXXXX); \
	  target/release/vpod run --timings --root $$R -- sh -c "echo hello from a container in a pod VM; cat /etc/vpod-release; id"; \
	  rc=$$?; rm -rf $$R; exit $$rc'; \
	echo "demo 2/3: vpod run exited with $$?"; \
	echo "demo 3/3: the CRI runtime: vpod-cri, driven by vpod-crictl (shim/cri/demo.sh)"; \
	"$${run[@]}" env "VPOD_DEMO_HOST=$$( [ "$$mode" = emulated ] && echo 'emulated KVM host, several times slower than real KVM' || echo 'real KVM')" shim/cri/demo.sh; \
	echo "demo 3/3: exited with $$?"

# Benchmarks: VMM start-up and memory natively (stub guests run on any KVM), Linux boot
# where guests boot (labelled emulated inside the emulated host); then containers in pods
# beside runc and crun, the layer-disk read and vsock through pod VMs (their fixtures made
# natively by `prepare`); the CRI runtime (pod start through vpod-cri beside runc, idle pod
# memory at 10 and 50 pods); the host-side device and image paths natively; then the targets.
bench: all kvm-host
	@missing=$$(for p in $(BENCH_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "bench: installing" $$missing; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	fi
	target/release/vpod-bench startup --runs 20
	@$(IN_GUEST_HOST); "$${run[@]}" target/release/vpod-bench linux-boot --runs 10 --host $$( [ "$$mode" = emulated ] && echo emulated || echo kvm)
	target/release/vpod-bench prepare
	@$(IN_GUEST_HOST); host=$$( [ "$$mode" = emulated ] && echo emulated || echo kvm); set -e; \
	"$${run[@]}" target/release/vpod-bench pod-start --runs 10 --host $$host; \
	"$${run[@]}" target/release/vpod-bench run-true --runs 5 --host $$host; \
	"$${run[@]}" target/release/vpod-bench layer-read --runs 3 --host $$host; \
	"$${run[@]}" target/release/vpod-bench vsock --runs 3 --mib 64 --host $$host; \
	"$${run[@]}" target/release/vpod-bench cri --runs 10 --host $$host; \
	VPOD_KVM_HOST_MEMORY_MIB=6144 "$${run[@]}" target/release/vpod-bench containerd --runs 5 --pods 3 --host $$host; \
	"$${run[@]}" target/release/vpod-bench net-pods --runs 3 --mib 32 --pods 3 --host $$host; \
	"$${run[@]}" target/release/vpod-bench fs-read --runs 3 --host $$host; \
	"$${run[@]}" target/release/vpod-bench volume-io --runs 3 --files $$( [ "$$host" = emulated ] && echo 1000 || echo 10000) --host $$host; \
	"$${run[@]}" target/release/vpod-bench balloon --runs 3 --host $$host; \
	VPOD_BENCH_CRI_VOLUMES=off,on,mounted VPOD_BENCH_CRI_MEMORY_PODS=10 "$${run[@]}" target/release/vpod-bench cri-memory --host $$host
	@echo "bench: the CRI socket's :authority normalisation, per RPC (native)"
	target/release/vpod-bench cri-rpc --runs 10
	@echo "bench: host-side device and image paths (native)"
	target/release/vpod-bench vsock-queue --mib 1600
	target/release/vpod-bench vsock-host-path --runs 5 --mib 256
	target/release/vpod-bench net-host-path --runs 5 --frames 20000
	target/release/vpod-bench conversion --runs 3 --mib 128
	target/release/vpod-bench cold-pull --runs 5 --mib 200
	target/release/vpod-bench check

clean:
	rm -rf $(BUILD)
	$(CARGO) clean
