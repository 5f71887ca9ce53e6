#!/usr/bin/env python3
"""What an fdatasync costs after a write that grows a file, against one that overwrites
blocks the file already has: the reason the WAL zero-fills its segments ahead of time
(wal/src/spare.rs). Writes WRITE bytes and fdatasyncs, COUNT times, into a file that
  grow    starts empty and grows with every write (the WAL before 150e74f),
  falloc  was fallocate'd to its full size first (unwritten extents),
  zero    was written with zeros to its full size and synced first (a preallocated segment),
and prints per kind the fdatasync p50 and p99 and the process CPU per fdatasync.

Usage: python3 bench/fsync.py [DIR] [ROUNDS]   (DIR on the disk to measure; default .)
"""
import os, resource, sys, time

DIR = sys.argv[1] if len(sys.argv) > 1 else "."
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
COUNT, WRITE = 3000, 8192


def run(kind):
    path = os.path.join(DIR, f"fsync-bench-{kind}.tmp")
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC)
    try:
        size = COUNT * WRITE
        if kind == "falloc":
            os.posix_fallocate(fd, 0, size)
            os.fsync(fd)
        elif kind == "zero":
            zeros = b"\0" * (1 << 20)
            for off in range(0, size, len(zeros)):
                os.pwrite(fd, zeros, off)
            os.fsync(fd)
        data = b"x" * WRITE
        lat = []
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        for i in range(COUNT):
            os.pwrite(fd, data, i * WRITE)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    cpu = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / COUNT * 1e6
    print(f"{kind:7} fdatasync p50 {lat[COUNT // 2] * 1e6:5.0f} us  p99 {lat[int(COUNT * 0.99)] * 1e6:6.0f} us  CPU {cpu:5.1f} us")


for _ in range(ROUNDS):
    for kind in ("grow", "falloc", "zero"):
        run(kind)
