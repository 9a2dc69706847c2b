#!/usr/bin/env bash
# The queen under a simulated fleet (issue 13): N hives of 8 GPUs at 1 Hz from
# `hive swarm` processes, the queen in its own process, measured apart.
#
#   docs/bench/scale.sh N [STEADY_SECONDS] [BIN_DIR]
#
# Prints: time to all online from a cold queen start; queen and swarm CPU (cores, from
# /proc/PID/stat) and RSS over STEADY_SECONDS (default 60); freshness (the queen's own
# histogram of publish time minus the hive's takenAt, from its /metrics); a WatchFleet
# client at 1 Hz (samples per second, sample age at send, and whether its lag grows);
# Place p50/p99 over gRPC at 20/s meanwhile (the place_load example); time until 1,000
# killed hives (or N/10 if fewer) are all lost; time to all online after a queen
# restart. Times come from the fleet_probe example, a WatchFleet client that follows
# the state events (no ListHives polling). BIN_DIR defaults to target/release and must
# hold hive, queen, examples/place_load and examples/fleet_probe:
#
#   cargo build --release -p rbee-hive -p rbee-queen --bins --examples
set -euo pipefail
n=${1:?usage: scale.sh N [STEADY_SECONDS] [BIN_DIR]}
steady=${2:-60}
bin=${3:-${CARGO_TARGET_DIR:-target}/release}
tmp=$(mktemp -d)
# Background processes are started in command substitutions (subshells), so their pids
# are kept in a file for the cleanup.
cleanup() { while read -r p; do kill -9 "$p" 2>/dev/null || true; done <"$tmp/pids"; rm -rf "$tmp"; }
trap cleanup EXIT
: >"$tmp/pids"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
qp=$(port)
kills=$(( n >= 10000 ? 1000 : n / 10 ))

# The swarm: the hives to be killed at once in a process of their own (killed whole,
# which closes all their connections at once), the rest in one process, or two above
# 9,000 hives (one process holds about 20,000 file descriptors here: a listener and a
# connection each). SWARM_WRAP: a command the swarm runs under, e.g. `nice -n 15` (this
# machine has 2 cores: a niced simulator takes what the queen leaves, the nearest this
# machine comes to hives on other machines; the swarm's CPU line and WatchFleet's
# samples per second show whether it kept up).
rest=$(( n - kills ))
per=$(( rest > 9000 ? (rest + 1) / 2 : rest ))
start_swarm() { # COUNT FIRST_ADDRESS PREFIX URLS_FILE
  RUST_LOG=warn ${SWARM_WRAP:-} "$bin/hive" swarm --count "$1" --gpus 8 --first-address "$2" --id-prefix "$3" \
    --urls-file "$4" >"$tmp/$3.log" 2>&1 &
  echo "$!" >>"$tmp/pids"; echo "$!"
}
s1=$(start_swarm "$per" 127.1.0.1 a "$tmp/urls.a")
s2=""
if (( rest > per )); then s2=$(start_swarm "$((rest - per))" 127.2.0.1 b "$tmp/urls.b"); fi
sk=$(start_swarm "$kills" 127.3.0.1 k "$tmp/urls.k")
for f in "$tmp/urls.a" ${s2:+"$tmp/urls.b"} "$tmp/urls.k"; do while [ ! -s "$f" ]; do sleep 0.2; done; done
cat "$tmp"/urls.* > "$tmp/urls"

# The hives go in a config file: 10,000 URLs are too long for one environment variable.
sed 's/.*/[[hive]]\naddress = "&"/' "$tmp/urls" >"$tmp/queen.toml"
# QUEEN_WRAP: a command the queen runs under, for memory studies (docs/BENCHMARKS.md):
# `env MALLOC_ARENA_MAX=2`, `env LD_PRELOAD=...`, or `heaptrack -o FILE`. The queen's pid
# (measured, killed) is then the wrapper's child named queen, or the wrapper if it exec'd.
start_queen() {
  # shellcheck disable=SC2086 # the wrapper is words
  RUST_LOG=warn ${QUEEN_WRAP:-} "$bin/queen" serve --config "$tmp/queen.toml" --listen "127.0.0.1:$qp" \
    --metrics-listen "127.0.0.1:$mport" --state-dir "$tmp/queen-state" >>"$tmp/queen.log" 2>&1 &
  local p=$! c=""
  echo "$p" >>"$tmp/pids"
  if [ -n "${QUEEN_WRAP:-}" ]; then
    for _ in $(seq 200); do
      if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = queen ]; then c=$p; break; fi
      c=$(pgrep -n -x queen -P "$p" || true); [ -n "$c" ] && break
      sleep 0.05
    done
    p=${c:-$p}; echo "$p" >>"$tmp/pids"
  fi
  echo "$p"
}
probe=${FLEET_PROBE:-$bin/examples/fleet_probe}
mport=$(port)
# Starts a probe waiting for COUNT hives in STATE; its output goes to FILE.
probe_until() { # STATE COUNT FILE
  "$probe" "http://127.0.0.1:$qp" until "$1" "$2" 300 >"$3" 2>&1 &
  echo "$!" >>"$tmp/pids"; echo "$!"
}
# Seconds from T0 until the probe writing FILE saw its count (the probe is PID, not
# this shell's child: it was started in a command substitution).
probe_wait() { # PID FILE T0
  while [ -e "/proc/$1" ] && ! grep -q '^reached\|^timeout' "$2"; do sleep 0.05; done
  local at; at=$(awk '$1=="reached" {print $2}' "$2")
  if [ -n "$at" ]; then echo "$at - $3" | bc; else cat "$2"; fi
}
# Until the probe writing FILE has the fleet's snapshot (or has exited).
wait_ready() { # PID FILE
  while [ -e "/proc/$1" ] && ! grep -q '^ready' "$2" 2>/dev/null; do sleep 0.05; done
}
t0=$(now); q=$(start_queen)
pr=$(probe_until online "$n" "$tmp/cold.txt")
echo "hives: $n x 8 GPUs at 1 Hz; swarm pids $s1 $s2 $sk; queen pid $q; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "all online from a cold start: $(probe_wait "$pr" "$tmp/cold.txt" "$t0") s"

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss() { awk '$1=="VmRSS:" {print $2}' "/proc/$1/status"; }
hz=$(getconf CLK_TCK)
sleep 5
swarm_ticks() { local t=0 p; for p in $s1 $s2 $sk; do t=$((t + $(ticks "$p"))); done; echo "$t"; }
swarm_rss() { local t=0 p; for p in $s1 $s2 $sk; do t=$((t + $(rss "$p"))); done; echo "$t"; }
qa=$(ticks "$q"); sa=$(swarm_ticks)
# Place over gRPC while ingesting: 20 calls a second through the steady window, from
# the place_load example (a real tonic client; grpcurl's process start would dominate).
place=""
place_load=${PLACE_LOAD:-$bin/examples/place_load}
if [ -x "$place_load" ]; then
  "$place_load" "http://127.0.0.1:$qp" "$(( (steady - 2) * 20 ))" 20 >"$tmp/place.txt" 2>&1 &
  place=$!
fi
# A WatchFleet client at 1 Hz through the steady window: sample age and keeping up.
delay_before=$(curl -sf "http://127.0.0.1:$mport/metrics" | grep '^rbee_queen_sample_publish_delay_seconds_bucket' || true)
place_before=$(curl -sf "http://127.0.0.1:$mport/metrics" | grep '^rbee_place_duration_seconds_bucket' || true)
"$probe" "http://127.0.0.1:$qp" watch "$steady" 1000 >"$tmp/watch.txt" 2>&1 || true
qb=$(ticks "$q"); sb=$(swarm_ticks)
load=$(cut -d' ' -f1-3 /proc/loadavg)
srss=$(swarm_rss)
echo "queen: CPU $(echo "scale=3; ($qb - $qa) / $hz / ($steady)" | bc) cores, RSS $(( $(rss "$q") / 1024 )) MiB ($(( $(rss "$q") / n )) KiB per hive)"
echo "load average (1, 5, 15 min) at the end of the steady window: $load"
echo "swarm: CPU $(echo "scale=3; ($sb - $sa) / $hz / ($steady)" | bc) cores, RSS $(( srss / 1024 )) MiB"
cat "$tmp/watch.txt"
# Quantiles of one of the queen's /metrics histograms over the steady window (given as
# the bucket bound each falls under).
histogram() { # NAME BEFORE_TEXT WHAT
  curl -sf "http://127.0.0.1:$mport/metrics" | grep "^$1_bucket" | python3 -c '
import re, sys
def parse(text):
    return {float(m.group(1)) if m.group(1) != "+Inf" else float("inf"): float(m.group(2))
            for m in re.finditer(r"le=\"([^\"]+)\"\}\s+(\S+)", text)}
after = parse(sys.stdin.read()); before = parse(sys.argv[1])
d = sorted((le, c - before.get(le, 0)) for le, c in after.items())
total = d[-1][1] if d else 0
def q(p):
    return next((le for le, c in d if c >= p * total), float("inf"))
ms = lambda le: "above the last bucket" if le == float("inf") else f"<= {le * 1000:g} ms"
print(f"{sys.argv[2]}: {int(total)} in the window, p50 {ms(q(0.5))}, p99 {ms(q(0.99))}")
' "$2" "$3"
}
# Freshness: the queen's own publish delay histogram.
histogram rbee_queen_sample_publish_delay_seconds "$delay_before" \
  "freshness (queen publish time - takenAt, the queen's /metrics histogram)"

if [ -n "$place" ]; then
  wait "$place" || true; cat "$tmp/place.txt"
  histogram rbee_place_duration_seconds "$place_before" "Place inside the queen (policy and durable commit, its /metrics histogram)"
else echo "Place: not measured (build the place_load example, or set PLACE_LOAD)"; fi

# Kill KILLS hives at once: all lost.
pr=$(probe_until lost "$kills" "$tmp/lost.txt"); wait_ready "$pr" "$tmp/lost.txt"
t0=$(now); kill -9 "$sk"
echo "$kills hives killed at once: all lost after $(probe_wait "$pr" "$tmp/lost.txt" "$t0") s"

# Queen restart.
kill "$q"; while [ -e "/proc/$q" ]; do sleep 0.1; done
t0=$(now); q=$(start_queen)
pr=$(probe_until online "$rest" "$tmp/restart.txt")
echo "all $rest live hives online after a queen restart: $(probe_wait "$pr" "$tmp/restart.txt" "$t0") s"
