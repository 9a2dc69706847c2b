#!/usr/bin/env python3
"""A scheduler client written from proto/ alone (grpcio), as a new client author would.

Usage: foreign_client.py PROTO_DIR REQUEST_ID QUEEN_URL [QUEEN_URL...]

It generates its stubs from PROTO_DIR into a temporary directory, then:
1. places 1 GiB on a CUDA device with REQUEST_ID, following the leader the way
   scheduler.proto says (UNAVAILABLE + the `rbee-leader` metadata), and prints
   `first <reservation_id> <reservation_token>`;
2. waits for a line on stdin (the test kills the leader meanwhile);
3. retries the very same Place until a queen answers (UNAVAILABLE during the failover:
   back off and try the next queen), and prints `second <reservation_id> <token>`;
4. lists the reservations on the queen that answered and prints `held <n>`: how many
   there are (the test places nothing else).
Each line is flushed at once. Errors end it with a non-zero exit and the reason.
"""

import os
import subprocess
import sys
import tempfile
import time


def stubs(proto_dir):
    out = tempfile.mkdtemp(prefix="rbee-py-")
    files = [os.path.join("rbee", "v1", f) for f in ("hive.proto", "scheduler.proto")]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", proto_dir,
         "--python_out", out, "--grpc_python_out", out] + files,
        check=True,
    )
    sys.path.insert(0, out)
    from rbee.v1 import scheduler_pb2, scheduler_pb2_grpc  # noqa: E402
    return scheduler_pb2, scheduler_pb2_grpc


def target(url):
    return url.split("://", 1)[-1]


def main():
    proto_dir, request_id, queens = sys.argv[1], sys.argv[2], sys.argv[3:]
    import grpc

    pb, rpc = stubs(proto_dir)
    request = pb.PlaceRequest(
        model="foreign", vram_bytes=1 << 30, device_kind=pb.DEVICE_KIND_CUDA,
        ttl_ms=3_600_000, request_id=request_id,
    )

    def place(deadline_s):
        """Place on the queens, following the leader; retries UNAVAILABLE until deadline."""
        order = list(queens)
        end = time.monotonic() + deadline_s
        last = None
        while time.monotonic() < end:
            url = order[0]
            with grpc.insecure_channel(target(url)) as channel:
                try:
                    resp = rpc.SchedulerStub(channel).Place(request, timeout=5)
                    return url, resp
                except grpc.RpcError as e:
                    last = e
                    if e.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    leader = dict(e.trailing_metadata() or ()).get("rbee-leader")
                    if leader and leader in order:
                        order.remove(leader)
                        order.insert(0, leader)
                    else:
                        order.append(order.pop(0))
            time.sleep(0.1)
        raise SystemExit(f"no queen answered Place within {deadline_s} s: {last}")

    url, resp = place(30)
    if resp.WhichOneof("result") != "placement":
        raise SystemExit(f"rejected: {resp}")
    p = resp.placement
    print("first", p.reservation_id, p.reservation_token, flush=True)

    sys.stdin.readline()

    url, resp = place(60)
    if resp.WhichOneof("result") != "placement":
        raise SystemExit(f"rejected on retry: {resp}")
    again = resp.placement
    print("second", again.reservation_id, again.reservation_token, flush=True)

    with grpc.insecure_channel(target(url)) as channel:
        stub = rpc.SchedulerStub(channel)
        held, token = 0, ""
        while True:
            page = stub.ListReservations(pb.ListReservationsRequest(page_token=token), timeout=5)
            held += len(page.reservations)
            token = page.next_page_token
            if not token:
                break
    print("held", held, flush=True)


if __name__ == "__main__":
    main()
