#!/usr/bin/env python3
"""The ratios of issue 3 from the last `cargo bench --bench verify`, as a markdown table.

Reads criterion's estimates (target/criterion/verify_<ALG>/<bench>/new/estimates.json, or
the directory given as the first argument) and prints, per algorithm, the median time of
each benchmark and:
  - miss/raw: verify-miss throughput as a fraction of the raw signature check's, i.e.
    raw time / miss time (target >= 0.9);
  - hit speed-up: miss time / hit time (target >= 20).
"""

import json
import pathlib
import sys

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
ALGS = ["ES256", "EdDSA", "RS256", "HS256"]


def median_ns(alg, bench):
    path = ROOT / f"verify_{alg}" / bench / "new" / "estimates.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["median"]["point_estimate"]


def show(ns):
    if ns is None:
        return "—"
    return f"{ns / 1000:.2f} µs" if ns >= 1000 else f"{ns:.0f} ns"


def verdict(ok):
    return "met" if ok else "**not met**"


print("| alg | raw check (parsed key) | raw (unparsed key) | jws parse | verify miss | verify hit "
      "| miss/raw (≥ 0.9) | hit speed-up (≥ 20×) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for alg in ALGS:
    raw = median_ns(alg, "raw_hmac" if alg == "HS256" else "raw_parsed_key")
    unparsed = median_ns(alg, "raw_unparsed_key")
    parse, miss, hit = (median_ns(alg, b) for b in ("jws_parse", "verifier_miss", "verifier_hit"))
    if None in (raw, miss, hit):
        print(f"| {alg} | no results under {ROOT} | | | | | | |")
        continue
    ratio, speedup = raw / miss, miss / hit
    print(f"| {alg} | {show(raw)} | {show(unparsed)} | {show(parse)} | {show(miss)} | {show(hit)} "
          f"| {ratio:.3f} ({verdict(ratio >= 0.9)}) | {speedup:.0f}× ({verdict(speedup >= 20)}) |")
