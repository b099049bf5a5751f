#!/bin/bash
# `make demo` part 3: vpod-cri serving CRI on a unix socket, driven by vpod-crictl: pull the
# embedded image, run a pod (a micro-VM) and a container in it, show its log, exec in it,
# remove the pod, stop the daemon. Run where guests boot (the Makefile wraps it in the
# emulated KVM host on machines whose KVM cannot boot Linux). Root, socket and logs live in
# a temporary directory on /tmp, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$PWD/target/release
dir=$(mktemp -d /tmp/vpod-cri-demo.XXXXXX)
daemon=

# Removes what pods are left through the daemon (their VMMs outlive it by design), then
# stops the daemon by its PID.
cleanup() {
  local status=$?
  if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
    for p in $("$bin/vpod-crictl" --runtime-endpoint "unix://$dir/cri.sock" pods -q 2>/dev/null); do
      echo "demo 3/3: removing pod $p, left behind"
      "$bin/vpod-crictl" --runtime-endpoint "unix://$dir/cri.sock" rmp "$p" >/dev/null 2>&1 || true
    done
    kill "$daemon"; wait "$daemon" 2>/dev/null || true
  fi
  if [ $status -ne 0 ] && [ -f "$dir/vpod-cri.log" ]; then
    echo "demo 3/3: failed ($status); the daemon's log:"; tail -n 30 "$dir/vpod-cri.log"
  fi
  rm -rf "$dir"
  exit $status
}
trap cleanup EXIT

cat >"$dir/config.toml" <<TOML
[pod]
default_memory_mib = 128
agent_timeout_secs = 120
writable_disk_mib = 64
TOML
"$bin/vpod-cri" --config "$dir/config.toml" --socket "$dir/cri.sock" --root "$dir/root" \
  2>"$dir/vpod-cri.log" &
daemon=$!
for _ in $(seq 300); do [ -S "$dir/cri.sock" ] && break; sleep 0.1; done
[ -S "$dir/cri.sock" ] || { echo "demo 3/3: vpod-cri did not create its socket"; exit 1; }
echo "demo 3/3: vpod-cri (pid $daemon) serves CRI on unix://$dir/cri.sock"

# Runs vpod-crictl with --timings: its output on stdout and in $out, its call times after it
# (the emulated host's console can interleave two streams mid-line).
timings=()
crictl() {
  echo "\$ vpod-crictl $*"
  out=$("$bin/vpod-crictl" --runtime-endpoint "unix://$dir/cri.sock" --timings "$@" 2>"$dir/err") \
    || { cat "$dir/err"; return 1; }
  [ -z "$out" ] || echo "$out"
  sed 's/^vpod-crictl: /  took: /' "$dir/err"
  timings+=("$(sed 's/^vpod-crictl: //' "$dir/err" | tr '\n' ' ')")
}

crictl version
crictl pull "oci:$PWD/build/images/default:latest"
image=$(echo "$out" | awk '{print $NF}')

cat >"$dir/pod.json" <<JSON
{
  "metadata": {"name": "demo", "namespace": "default", "uid": "demo-uid-1"},
  "hostname": "demo-pod",
  "log_directory": "$dir/logs/demo",
  "dns_config": {"servers": ["10.96.0.10"], "searches": ["default.svc.cluster.local"]},
  "labels": {"app": "demo"}
}
JSON
cat >"$dir/container.json" <<JSON
{
  "metadata": {"name": "hello"},
  "image": {"image": "$image"},
  "command": ["sh", "-c", "echo hello from a container in pod \$(hostname), a vpod micro-VM; uname -sr; echo greeting=\$GREETING; sleep 3600"],
  "envs": [{"key": "GREETING", "value": "hi via CRI"}],
  "log_path": "hello/0.log"
}
JSON

crictl runp "$dir/pod.json"; pod=$out; run_ms=${timings[-1]}
crictl create "$pod" "$dir/container.json" "$dir/pod.json"; ctr=$out; create_ms=${timings[-1]}
crictl start "$ctr"; start_ms=${timings[-1]}
for _ in $(seq 200); do
  [ -n "$("$bin/vpod-crictl" --runtime-endpoint "unix://$dir/cri.sock" logs "$ctr" 2>/dev/null)" ] && break
  sleep 0.1
done
crictl pods
crictl ps
crictl logs "$ctr"
crictl exec "$ctr" cat /etc/resolv.conf
crictl update --memory 67108864 --cpu-quota 50000 --cpu-period 100000 "$ctr"
echo "demo 3/3: the log file $dir/logs/demo/hello/0.log in CRI format:"
cat "$dir/logs/demo/hello/0.log"
crictl rmp "$pod"
kill "$daemon"; wait "$daemon" || true
daemon=
echo "demo 3/3: pod removed, vpod-cri stopped"
echo "demo 3/3: timings (${VPOD_DEMO_HOST:-this host}): $run_ms/ $create_ms/ $start_ms"
