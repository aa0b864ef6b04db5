#!/usr/bin/env python3
"""Turns criterion's results (target/criterion) into the BENCHMARKS.md tables.

Throughput groups: one row per provider and operation, the library's msg/s,
the raw client's msg/s from the same run, and their ratio. Latency groups
(no throughput): ns per call, with each variant's ratio to `direct`.

    python3 scripts/bench_table.py [target/criterion]
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
results = {}
for meta_path in root.glob("**/new/benchmark.json"):
    meta = json.loads(meta_path.read_text())
    estimates = json.loads((meta_path.parent / "estimates.json").read_text())
    ns = estimates["median"]["point_estimate"]
    elements = (meta.get("throughput") or {}).get("Elements")
    group, function = meta["group_id"], meta["function_id"] or meta.get("value_str")
    results.setdefault(group, {})[function] = (ns, elements)

throughput = {g: r for g, r in results.items() if any(e for _, e in r.values())}
latency = {g: r for g, r in results.items() if g not in throughput}

if throughput:
    print("| operation | provider | tasker-messaging (msg/s) | raw client (msg/s) | ratio |")
    print("| --- | --- | ---: | ---: | ---: |")
    same_wire = []
    for group in sorted(throughput):
        operation, provider = group.rsplit("/", 1)
        runs = throughput[group]
        rate = {f: e / (ns / 1e9) for f, (ns, e) in runs.items()}
        ours = next((r for f, r in rate.items() if f.startswith("tasker")), None)
        raw = next((r for f, r in rate.items() if f.startswith("raw/")), None)
        wire = next((r for f, r in rate.items() if f.startswith("raw-same-wire/")), None)
        ratio = f"{ours / raw:.2f}x" if ours and raw else "n/a (no raw client)"
        raw_s = f"{raw:,.0f}" if raw else "-"
        print(f"| {operation} | {provider} | {ours:,.0f} | {raw_s} | {ratio} |")
        if wire:
            same_wire.append((operation, provider, ours, raw, wire))
    print()
    if same_wire:
        # The raw client again, publishing the library's message format.
        print("| operation | provider | tasker-messaging (msg/s) | raw, plain (msg/s) | raw, same wire format (msg/s) | same wire vs plain | tasker vs same wire |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for operation, provider, ours, raw, wire in same_wire:
            print(f"| {operation} | {provider} | {ours:,.0f} | {raw:,.0f} | {wire:,.0f} | {wire / raw:.2f}x | {ours / wire:.2f}x |")
        print()

for group in sorted(latency):
    runs = latency[group]
    direct = runs.get("direct", (None,))[0]
    print(f"**{group}**\n")
    print("| call path | time per call | vs direct |")
    print("| --- | ---: | ---: |")
    for function, (ns, _) in sorted(runs.items(), key=lambda kv: kv[1][0]):
        shown = f"{ns:.2f} ns" if ns < 1000 else f"{ns / 1000:.3f} µs"
        ratio = f"{ns / direct:.2f}x" if direct else "-"
        print(f"| {function} | {shown} | {ratio} |")
    print()
