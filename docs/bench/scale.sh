#!/usr/bin/env bash
# The queen under a simulated fleet (issue 13): N hives of 8 GPUs at 1 Hz from one
# `hive swarm` process, the queen in its own process, measured apart.
#
#   docs/bench/scale.sh N [STEADY_SECONDS] [BIN_DIR]
#
# Prints: time to all online from a cold queen start; queen and swarm CPU (cores, from
# /proc/PID/stat) and RSS over STEADY_SECONDS (default 60); freshness (queen publish
# time minus the hive's takenAt, from a WatchFleet client at 1 Hz, p50/p99) and whether
# that client kept up; time until 1,000 killed hives (or N/10 if fewer) are all lost;
# time to all online after a queen restart. BIN_DIR defaults to target/release.
set -euo pipefail
n=${1:?usage: scale.sh N [STEADY_SECONDS] [BIN_DIR]}
steady=${2:-60}
bin=${3:-${CARGO_TARGET_DIR:-target}/release}
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
qp=$(port)
kills=$(( n >= 10000 ? 1000 : n / 10 ))

# The swarm; one process holds at most ~9,000 hives under a 20,000 fd limit (a listener
# and a connection each, plus announce calls), so larger fleets use two.
per=$(( n > 9000 ? (n + 1) / 2 : n ))
start_swarm() { # COUNT FIRST_ADDRESS PREFIX URLS_FILE [FAULTS]
  RUST_LOG=warn "$bin/hive" swarm --count "$1" --gpus 8 --first-address "$2" --id-prefix "$3" \
    --urls-file "$4" ${5:+--fault "$5"} >"$tmp/$3.log" 2>&1 &
  pids+=("$!"); echo "$!"
}
s1=$(start_swarm "$per" 127.1.0.1 a "$tmp/urls.a" "")
s2=""
if (( n > per )); then s2=$(start_swarm "$((n - per))" 127.2.0.1 b "$tmp/urls.b" ""); fi
for f in "$tmp/urls.a" ${s2:+"$tmp/urls.b"}; do while [ ! -s "$f" ]; do sleep 0.2; done; done
cat "$tmp"/urls.* > "$tmp/urls"

start_queen() {
  QUEEN_HIVES=$(paste -sd, "$tmp/urls") RUST_LOG=warn "$bin/queen" serve --listen "127.0.0.1:$qp" \
    --state-dir "$tmp/queen-state" >>"$tmp/queen.log" 2>&1 &
  pids+=("$!"); echo "$!"
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
wait_online() {
  local t0=$1
  while [ "$(online)" -lt "$n" ]; do
    if (( $(echo "$(since "$t0") > 300" | bc) )); then echo "timeout"; return; fi
    sleep 1
  done
  since "$t0"
}

t0=$(now); q=$(start_queen)
echo "hives: $n x 8 GPUs at 1 Hz; swarm pids $s1 $s2; queen pid $q"
echo "all online from a cold start: $(wait_online "$t0") s"

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss() { awk '$1=="VmRSS:" {print $2}' "/proc/$1/status"; }
hz=$(getconf CLK_TCK)
sleep 5
qa=$(ticks "$q"); sa=$(ticks "$s1"); [ -n "$s2" ] && sa=$((sa + $(ticks "$s2")))
# A WatchFleet client at 1 Hz through the steady window: freshness and keeping up.
grpcurl -plaintext -max-msg-sz 268435456 -max-time "$steady" -d '{"sampleIntervalMs":1000}' \
  "127.0.0.1:$qp" rbee.v1.Fleet/WatchFleet >"$tmp/watch.json" 2>/dev/null || true
qb=$(ticks "$q"); sb=$(ticks "$s1"); [ -n "$s2" ] && sb=$((sb + $(ticks "$s2")))
srss=$(rss "$s1"); [ -n "$s2" ] && srss=$((srss + $(rss "$s2")))
echo "queen: CPU $(echo "scale=3; ($qb - $qa) / $hz / ($steady)" | bc) cores, RSS $(( $(rss "$q") / 1024 )) MiB ($(( $(rss "$q") / n )) KiB per hive)"
echo "swarm: CPU $(echo "scale=3; ($sb - $sa) / $hz / ($steady)" | bc) cores, RSS $(( srss / 1024 )) MiB"
jq -s -r '[.[] | select(.sample) | ((.queenTimeUnixMs | tonumber) - (.sample.sample.takenAtUnixMs | tonumber))] | sort
  | if length == 0 then "freshness: no samples" else
    "freshness (WatchFleet send time - takenAt): \(length) samples, p50 \(.[length/2|floor]) ms, p99 \(.[length*99/100|floor]) ms, max \(.[-1]) ms" end' \
  "$tmp/watch.json"
jq -s -r '[.[] | select(.sample)] | group_by((.queenTimeUnixMs | tonumber) / 1000 | floor) | map(length)
  | "WatchFleet samples per second: first \(.[1] // 0), last \(.[-2] // 0) (expected about '"$n"'), \(length) seconds"' "$tmp/watch.json"

# Kill KILLS hives at once: all lost.
# Killing a hive is a fault of the swarm itself; a separate swarm of KILLS hives is
# started and killed whole, which closes all their connections at once.
sk=$(start_swarm "$kills" 127.3.0.1 k "$tmp/urls.k" "")
while [ ! -s "$tmp/urls.k" ]; do sleep 0.2; done
for u in $(cat "$tmp/urls.k"); do
  grpcurl -plaintext -d "{\"address\":\"$u\"}" "127.0.0.1:$qp" rbee.v1.Fleet/AddHive >/dev/null 2>&1 &
done
wait_all=0; while [ "$(count_state HIVE_STATE_ONLINE)" -lt "$((n + kills))" ] && [ $wait_all -lt 120 ]; do sleep 1; wait_all=$((wait_all+1)); done
t0=$(now); kill -9 "$sk"
while [ "$(count_state HIVE_STATE_LOST)" -lt "$kills" ]; do
  if (( $(echo "$(since "$t0") > 60" | bc) )); then echo "kill: timeout"; break; fi
  sleep 0.2
done
echo "$kills hives killed at once: all lost after $(since "$t0") s (includes ListHives polling)"

# Queen restart.
kill "$q"; wait "$q" 2>/dev/null || true
t0=$(now); q=$(start_queen)
echo "all online after a queen restart: $(wait_online "$t0") s"
