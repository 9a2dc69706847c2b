#!/usr/bin/env bash
# The queen under a simulated fleet (issue 13): N hives of 8 GPUs at 1 Hz from one
# `hive swarm` process, the queen in its own process, measured apart.
#
#   docs/bench/scale.sh N [STEADY_SECONDS] [BIN_DIR]
#
# Prints: time to all online from a cold queen start; queen and swarm CPU (cores, from
# /proc/PID/stat) and RSS over STEADY_SECONDS (default 60); freshness (queen publish
# time minus the hive's takenAt, from a WatchFleet client at 1 Hz, p50/p99) and whether
# that client kept up; Place p50/p99 over gRPC at 20/s meanwhile (the place_load
# example); time until 1,000 killed hives (or N/10 if fewer) are all lost;
# time to all online after a queen restart. BIN_DIR defaults to target/release;
# PLACE_LOAD names the place_load client (default BIN_DIR/examples/place_load).
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
# connection each).
rest=$(( n - kills ))
per=$(( rest > 9000 ? (rest + 1) / 2 : rest ))
start_swarm() { # COUNT FIRST_ADDRESS PREFIX URLS_FILE
  RUST_LOG=warn "$bin/hive" swarm --count "$1" --gpus 8 --first-address "$2" --id-prefix "$3" \
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
start_queen() {
  RUST_LOG=warn "$bin/queen" serve --config "$tmp/queen.toml" --listen "127.0.0.1:$qp" \
    --state-dir "$tmp/queen-state" >>"$tmp/queen.log" 2>&1 &
  echo "$!" >>"$tmp/pids"; echo "$!"
}
online() { # count of ONLINE hives, all pages
  local token="" total=0 page
  while :; do
    page=$(grpcurl -plaintext -max-msg-sz 268435456 -d "{\"pageSize\":1000,\"pageToken\":\"$token\"}" \
      "127.0.0.1:$qp" rbee.v1.Fleet/ListHives 2>/dev/null) || { echo 0; return; }
    total=$(( total + $(jq '[.hives[]? | select(.state == "HIVE_STATE_ONLINE")] | length' <<<"$page") ))
    token=$(jq -r '.nextPageToken // ""' <<<"$page")
    [ -z "$token" ] && break
  done
  echo "$total"
}
count_state() { # STATE: hives in it, all pages
  local token="" total=0 page
  while :; do
    page=$(grpcurl -plaintext -max-msg-sz 268435456 -d "{\"pageSize\":1000,\"pageToken\":\"$token\"}" \
      "127.0.0.1:$qp" rbee.v1.Fleet/ListHives 2>/dev/null) || { echo 0; return; }
    total=$(( total + $(jq --arg s "$1" '[.hives[]? | select(.state == $s)] | length' <<<"$page") ))
    token=$(jq -r '.nextPageToken // ""' <<<"$page")
    [ -z "$token" ] && break
  done
  echo "$total"
}
wait_online() { # T0 [COUNT]
  local t0=$1 want=${2:-$n}
  while [ "$(online)" -lt "$want" ]; do
    if (( $(echo "$(since "$t0") > 300" | bc) )); then echo "timeout"; return; fi
    sleep 1
  done
  since "$t0"
}

t0=$(now); q=$(start_queen)
echo "hives: $n x 8 GPUs at 1 Hz; swarm pids $s1 $s2 $sk; queen pid $q; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "all online from a cold start: $(wait_online "$t0") s"

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
# A WatchFleet client at 1 Hz through the steady window: freshness and keeping up.
grpcurl -plaintext -max-msg-sz 268435456 -max-time "$steady" -d '{"sampleIntervalMs":1000}' \
  "127.0.0.1:$qp" rbee.v1.Fleet/WatchFleet >"$tmp/watch.json" 2>/dev/null || true
qb=$(ticks "$q"); sb=$(swarm_ticks)
load=$(cut -d' ' -f1-3 /proc/loadavg)
srss=$(swarm_rss)
echo "queen: CPU $(echo "scale=3; ($qb - $qa) / $hz / ($steady)" | bc) cores, RSS $(( $(rss "$q") / 1024 )) MiB ($(( $(rss "$q") / n )) KiB per hive)"
echo "load average (1, 5, 15 min) at the end of the steady window: $load"
echo "swarm: CPU $(echo "scale=3; ($sb - $sa) / $hz / ($steady)" | bc) cores, RSS $(( srss / 1024 )) MiB"
jq -s -r '[.[] | select(.sample) | ((.queenTimeUnixMs | tonumber) - (.sample.sample.takenAtUnixMs | tonumber))] | sort
  | if length == 0 then "freshness: no samples" else
    "freshness (WatchFleet send time - takenAt): \(length) samples, p50 \(.[length/2|floor]) ms, p99 \(.[length*99/100|floor]) ms, max \(.[-1]) ms" end' \
  "$tmp/watch.json"
jq -s -r '[.[] | select(.sample)] | group_by((.queenTimeUnixMs | tonumber) / 1000 | floor) | map(length)
  | "WatchFleet samples per second: first \(.[1] // 0), last \(.[-2] // 0) (expected about '"$n"'), \(length) seconds"' "$tmp/watch.json"

if [ -n "$place" ]; then wait "$place" || true; cat "$tmp/place.txt"; else echo "Place: not measured (build the place_load example, or set PLACE_LOAD)"; fi

# Kill KILLS hives at once: all lost.
t0=$(now); kill -9 "$sk"
while [ "$(count_state HIVE_STATE_LOST)" -lt "$kills" ]; do
  if (( $(echo "$(since "$t0") > 60" | bc) )); then echo "kill: timeout"; break; fi
  sleep 0.2
done
echo "$kills hives killed at once: all lost after $(since "$t0") s (includes ListHives polling)"

# Queen restart.
kill "$q"; while [ -e "/proc/$q" ]; do sleep 0.1; done
t0=$(now); q=$(start_queen)
echo "all $rest live hives online after a queen restart: $(wait_online "$t0" "$rest") s"
