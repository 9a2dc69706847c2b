#!/usr/bin/env bash
# The hive's own cost next to node_exporter's, side by side in one run (issue 13).
#
#   docs/bench/hive_cost.sh [SECONDS] [HIVE_BINARY]
#
# Starts `hive serve` with the real host source (sysinfo) and 8 simulated GPUs
# (docs/bench/eight-gpus.toml), with one MetricsStream subscriber at 1 Hz (grpcurl), and
# `prometheus-node-exporter` with only the cpu and meminfo collectors, scraped once a
# second (curl). Both run for SECONDS (default 60); then it prints each process's CPU
# time per sample / per scrape (from /proc/PID/stat) and its RSS (VmRSS, VmHWM), split
# into anonymous and file-backed, and where the hive's file-backed pages are (its own
# binary's code and read-only data, the shared libraries; /proc/PID/smaps). For the
# shipped build: `cargo build --profile dist -p rbee-hive --bin hive`, then give
# target/dist/hive as HIVE_BINARY.
# Where `perf` runs, it also prints each one's task-clock over the same window (finer
# than the 10 ms ticks of /proc/PID/stat).
set -euo pipefail
secs=${1:-60}
hive=${2:-${CARGO_TARGET_DIR:-target}/release/hive}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
hp=$(port); np=$(port)
RUST_LOG=warn "$hive" serve --listen "127.0.0.1:$hp" --hive-id bench --state-dir "$tmp" \
  --simulate "$here/eight-gpus.toml" >"$tmp/hive.log" 2>&1 &
hpid=$!; pids+=("$hpid")
prometheus-node-exporter --collector.disable-defaults --collector.cpu --collector.meminfo \
  --web.listen-address="127.0.0.1:$np" >"$tmp/ne.log" 2>&1 &
npid=$!; pids+=("$npid")
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$np/metrics" >/dev/null && grpcurl -plaintext "127.0.0.1:$hp" list >/dev/null 2>&1 && break
  sleep 0.1
done
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# One subscriber at 1 Hz; count the samples it gets.
grpcurl -plaintext -max-time "$((secs + 2))" -d '{"sampleIntervalMs":1000}' "127.0.0.1:$hp" rbee.v1.Hive/MetricsStream \
  >"$tmp/stream.json" 2>/dev/null &
spid=$!; pids+=("$spid")
sleep 1
h0=$(ticks "$hpid"); n0=$(ticks "$npid"); start=$(date +%s.%N)
perfs=()
if perf stat -e task-clock -- true >/dev/null 2>&1; then
  perf stat -x, -e task-clock -p "$hpid" -o "$tmp/hive.perf" -- sleep "$secs" >/dev/null 2>&1 & perfs+=($!)
  perf stat -x, -e task-clock -p "$npid" -o "$tmp/ne.perf" -- sleep "$secs" >/dev/null 2>&1 & perfs+=($!)
fi
scrapes=0
while (( $(echo "$(date +%s.%N) - $start < $secs" | bc) )); do
  curl -sf "http://127.0.0.1:$np/metrics" >/dev/null && scrapes=$((scrapes + 1))
  sleep 1
done
h1=$(ticks "$hpid"); n1=$(ticks "$npid")
samples=$(grep -c '"takenAtUnixMs"' "$tmp/stream.json" || true)
rss() { awk -v k="$2" '$1==k {print $2}' "/proc/$1/status"; }
awk -v hs="$samples" -v ns="$scrapes" -v ht="$((h1 - h0))" -v nt="$((n1 - n0))" -v hz="$hz" \
  -v hr="$(rss "$hpid" VmRSS:)" -v hh="$(rss "$hpid" VmHWM:)" -v nr="$(rss "$npid" VmRSS:)" -v nh="$(rss "$npid" VmHWM:)" \
  -v ha="$(rss "$hpid" RssAnon:)" -v hf="$(rss "$hpid" RssFile:)" -v na="$(rss "$npid" RssAnon:)" -v nf="$(rss "$npid" RssFile:)" 'BEGIN {
  hms = ht * 1000 / hz / (hs > 0 ? hs : 1); nms = nt * 1000 / hz / (ns > 0 ? ns : 1);
  printf "hive:          %d samples (8 GPUs), CPU %.2f ms per sample, RSS %.1f MiB (peak %.1f MiB; anonymous %.1f, file-backed %.1f)\n", hs, hms, hr / 1024, hh / 1024, ha / 1024, hf / 1024;
  printf "node_exporter: %d scrapes (cpu+meminfo), CPU %.2f ms per scrape, RSS %.1f MiB (peak %.1f MiB; anonymous %.1f, file-backed %.1f)\n", ns, nms, nr / 1024, nh / 1024, na / 1024, nf / 1024;
  if (nms > 0) printf "hive / node_exporter CPU: %.2f (target <= 0.25)\n", hms / nms;
}'
# Where the hive's file-backed RSS is (the split above, explained): pages of its own
# binary mapped from the page cache (its code, and read-only data with the relocation
# and unwind tables), and of the shared libraries (libc, libm, ...). Shared with the page
# cache and other processes mapping the same files; reclaimable. Private written pages
# (the relocated data) count as anonymous, in smaps as in /proc/PID/status.
exe=$(readlink -f "/proc/$hpid/exe")
awk -v exe="$exe" '
  /^[0-9a-f]+-[0-9a-f]+ / { path = $6; perms = $2; next }
  $1 == "Rss:" { rss = $2; next }
  $1 == "Anonymous:" {
    f = rss - $2;
    if (path == exe) { if (perms ~ /x/) code += f; else data += f }
    else if (path ~ /^\//) libs += f;
  }
  END { printf "hive file-backed RSS: its binary %.1f MiB (code %.1f, read-only data %.1f), shared libraries %.1f MiB\n", (code + data) / 1024, code / 1024, data / 1024, libs / 1024 }
' "/proc/$hpid/smaps"
if ((${#perfs[@]})); then
  wait "${perfs[@]}" || true
  clock() { awk -F, '$3 == "task-clock" || $3 ~ /task-clock/ {print $1; exit}' "$1"; }
  awk -v hs="$samples" -v ns="$scrapes" -v h="$(clock "$tmp/hive.perf")" -v n="$(clock "$tmp/ne.perf")" 'BEGIN {
    if (h == "" || n == "") exit;
    printf "perf task-clock: hive %.3f ms per sample, node_exporter %.3f ms per scrape, ratio %.2f\n", h / (hs > 0 ? hs : 1), n / (ns > 0 ? ns : 1), (h / (hs > 0 ? hs : 1)) / (n / (ns > 0 ? ns : 1));
  }'
fi
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "(CPU from /proc/PID/stat utime+stime at $hz ticks/s over ${secs} s: coarse; use 120 s or more for tighter figures)"
