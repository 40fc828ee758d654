#!/usr/bin/env python3
# Goal 6 from gpu_check.sh's ncu step (issue 5: a call's DRAM bytes at most 1.15 x the bytes
# sn_bench counts): the kernels of the CSV that ncu printed into bench.log, cut into calls (a call
# starts at its first kernel: the rows, coop, inner, on-chip or matvec kernel), consecutive calls
# with the same kernels and grids grouped; per group the median call's DRAM read and write bytes
# and kernel time. Compare the total with sn_bench's count (train and eval 3, scale 1, backward
# 4 x bytes(W)); a kernel's write column also holds the write-back of lines an earlier call left
# dirty in L2, so only a call's sum means something.
#
#   python3 bench/ncu_calls.py OUT/bench.log
import csv, io, re, signal, statistics, sys
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
lines = [l for l in open(sys.argv[1]) if l.startswith('"')]
rows = [r for r in csv.reader(io.StringIO(''.join(lines))) if r[0] != 'ID']
ks = {}
for r in rows:
    d = ks.setdefault(int(r[0]), {'name': re.sub(r'\(.*', '', r[4]).replace('void ', '').replace('unnamed>::', ''), 'grid': r[8]})
    d[r[12]] = float(r[14].replace(',', ''))
seq = [ks[i] for i in sorted(ks)]
START = re.compile(r'^(one_pass_rows|one_pass_coop|backward_inner|inner_kernel|matvec_pass1|group_rows|group_coop|group_on_chip|on_chip|group_backward_inner|group_backward_coop|group_inner)')
calls = []
for k in seq:
    if START.match(k['name']) or not calls:
        calls.append([k])
    else:
        calls[-1].append(k)
groups = []
for c in calls:
    sig = tuple((k['name'], k['grid']) for k in c)
    if groups and groups[-1][0] == sig:
        groups[-1][1].append(c)
    else:
        groups.append((sig, [c]))
for sig, cs in groups:
    rd = statistics.median(sum(k['dram__bytes_read.sum'] for k in c) for c in cs) / 1e6
    wr = statistics.median(sum(k['dram__bytes_write.sum'] for k in c) for c in cs) / 1e6
    us = statistics.median(sum(k['gpu__time_duration.sum'] for k in c) for c in cs) / 1e3
    print(f"{len(cs):3d} calls  read {rd:8.1f} MB  write {wr:8.1f} MB  total {rd+wr:8.1f} MB  {us:8.1f} us  " + ' + '.join(f"{n}{g}" for n, g in sig))
