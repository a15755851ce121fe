"""Issue 17's targets, judged on one run of bench/compare.py and printed as met, missed or not measured
(a system that was left out). Tests never assert times; this is where targets live.
"""
LEADER = "zmqstore leader"
SAFE_ANCHORS = ("redis always+WAIT", "etcd")     # the stores giving the guarantees closest to zmqstore's
FLOOR_FACTOR = 1.5
PIPELINED_OF_SINGLE = 0.70
# zmqstore leader / Redis as people run it (asynchronous): at least this much
VS_ASYNC_REDIS = {"seq_put": 0.16, "pipelined_put": 0.36}


def _ops(summary, label, workload, clients):
    s = summary.get((label, workload, clients))
    return s["ops_s"] if s and s["ops_s"] else None


def targets(summary, raw):
    """[(description, figure text, met: True, False or None when not measured)]"""
    out = []
    most = max((c for (_label, w, c) in summary if w == "A"), default=16)   # 16 unless --clients says
    for workload, clients in (("seq_put", 1), ("pipelined_put", 1), ("A", most), ("B", most)):
        lead = _ops(summary, LEADER, workload, clients)
        for anchor in SAFE_ANCHORS:
            other = _ops(summary, anchor, workload, clients)
            ratio = lead / other if lead and other else None
            out.append((f"{workload}, {clients} client(s): zmqstore leader >= {anchor}",
                        f"{ratio:.2f}x" if ratio else "-", None if ratio is None else ratio >= 1.0))
    for workload, minimum in VS_ASYNC_REDIS.items():
        lead, other = _ops(summary, LEADER, workload, 1), _ops(summary, "redis async", workload, 1)
        ratio = lead / other if lead and other else None
        out.append((f"{workload}: zmqstore leader >= {minimum}x redis async", f"{ratio:.2f}x" if ratio else "-",
                    None if ratio is None else ratio >= minimum))
    seq = summary.get((LEADER, "seq_put", 1))
    floor = raw.get("replicated_put_floor_us")
    if seq and floor:
        times = seq["p50_us"] / floor
        out.append((f"sequential put p50 <= {FLOOR_FACTOR}x floor ({floor:.0f} us)",
                    f"{seq['p50_us']:.0f} us = {times:.2f}x", times <= FLOOR_FACTOR))
        shared = raw.get("replicated_put_floor_shared_disk_us")
        if shared:      # not a target: the same floor with the three nodes' fsyncs sharing one disk
            out.append((f"  (the floor with 3 nodes syncing on this one disk: {shared:.0f} us)",
                        f"{seq['p50_us'] / shared:.2f}x", None))
        idle = raw.get("replicated_put_floor_after_idle_us")
        if idle:        # not a target: the same floor with round trips between idle processes
            out.append((f"  (the floor with round trips after 2 ms idle: {idle:.0f} us)",
                        f"{seq['p50_us'] / idle:.2f}x", None))
    lead, single = _ops(summary, LEADER, "pipelined_put", 1), _ops(summary, "zmqstore single", "pipelined_put", 1)
    share = lead / single if lead and single else None
    out.append((f"pipelined puts, leader >= {PIPELINED_OF_SINGLE:.0%} of the single node",
                f"{share:.0%}" if share else "-", None if share is None else share >= PIPELINED_OF_SINGLE))
    return out


def report_targets(summary, raw):
    rows = targets(summary, raw)
    width = max(len(r[0]) for r in rows)
    print("targets (issue 17):")
    for description, figure, met in rows:
        verdict = ("" if description.startswith("  ") else "not measured") if met is None else \
            ("met" if met else "missed")
        print(f"  {description.ljust(width)}  {figure:>16}  {verdict}")
    return rows
