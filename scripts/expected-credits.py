#!/usr/bin/env python3
"""Derives the exact credits of a line-protocol sample, independently of the
service: its own line-protocol reader, the billing rules written out again,
the de.NBI prices, Python's exact `decimal`.

    python3 scripts/expected-credits.py examples/stack-sample.lp

prints what `examples/stack-sample.expected.json` holds (host/tests/cli.rs
checks that the file equals this output); with `--steps`, each project's
charged steps instead, as [previous timestamp, timestamp, credits]
(host/tests/forecasts.rs derives the forecasts from them).

    python3 scripts/expected-credits.py SAMPLE --change FROM_NS CPU RAM

prices usage from FROM_NS (Unix ns) on at CPU and RAM instead: a step that
ends at or before it at the old prices, one that starts at or after it at
the new, one that spans it split there, its value interpolated linearly in
time, each part at its own prices (host/tests/schedule.rs checks the
service against this).

The rules, per key (project, site = `location_id`, metric), in line order:
the first point is a baseline; a point not newer than the key's state
changes nothing; the same value changes nothing (the state keeps its
timestamp); a lower value (the exporter restarted) becomes the new state
and charges nothing; a higher value charges (value - state) x price and
becomes the state. Prices: `project_vcpu_usage` 1 credit per vCPU-hour,
`project_mb_usage` 0.3 per GiB-hour; other measurements are not billed.
"""

import json
import sys
from decimal import Decimal, localcontext

PRICES = {
    "project_vcpu_usage": Decimal("1"),
    "project_mb_usage": Decimal("0.3"),
}


def split_unescaped(text, separator):
    """Splits at `separator` where it is not escaped by a backslash."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def unescape(text):
    out, escaped = [], False
    for char in text:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    return "".join(out)


def points(lines):
    """(measurement, tags, value text, timestamp) of each data line."""
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = split_unescaped(line, " ")
        if len(parts) != 3:
            raise ValueError(f"line {number}: expected 3 parts, got {len(parts)}")
        series, fields, timestamp = parts
        names = split_unescaped(series, ",")
        measurement = unescape(names[0])
        tags = {}
        for pair in names[1:]:
            key, value = split_unescaped(pair, "=")
            tags[unescape(key)] = unescape(value)
        values = dict(split_unescaped(f, "=") for f in split_unescaped(fields, ","))
        if "value" not in values:
            continue
        yield measurement, tags, values["value"].rstrip("i"), int(timestamp)


def charge(measurement, previous, current, change):
    """The charge of a step from `previous` to `current` (timestamp, value)."""
    price = PRICES[measurement]
    if change is None:
        return (current[1] - previous[1]) * price
    at, new_prices = change
    new_price = new_prices[measurement]
    (t0, v0), (t1, v1) = previous, current
    if t1 <= at:
        return (v1 - v0) * price
    if t0 >= at:
        return (v1 - v0) * new_price
    middle = v0 + (v1 - v0) * Decimal(at - t0) / Decimal(t1 - t0)
    return (middle - v0) * price + (v1 - middle) * new_price


def credits(lines, change=None, steps=None):
    """Credits per project; with `steps` (a dict), also each project's
    charged steps as [previous timestamp, timestamp, credits]."""
    states = {}
    projects = {}
    for measurement, tags, text, timestamp in points(lines):
        price = PRICES.get(measurement)
        if price is None:
            continue
        project, site = tags["project_name"], tags["location_id"]
        value = Decimal(text)
        key = (project, site, measurement)
        projects.setdefault(project, Decimal(0))
        state = states.get(key)
        if state is None:
            states[key] = (timestamp, value)  # baseline
        elif timestamp <= state[0]:
            pass  # not newer
        elif value == state[1]:
            pass  # unchanged: the state keeps its timestamp
        elif value < state[1]:
            states[key] = (timestamp, value)  # counter reset
        else:
            amount = charge(measurement, state, (timestamp, value), change)
            projects[project] += amount
            if steps is not None:
                steps.setdefault(project, []).append([state[0], timestamp, str(amount)])
            states[key] = (timestamp, value)
    return projects


def main():
    args = sys.argv[1:]
    change = None
    if "--change" in args:
        at = args.index("--change")
        moment, cpu, ram = args[at + 1 : at + 4]
        change = (
            int(moment),
            {"project_vcpu_usage": Decimal(cpu), "project_mb_usage": Decimal(ram)},
        )
        del args[at : at + 4]
    steps = {} if "--steps" in args else None
    if steps is not None:
        args.remove("--steps")
    path = args[0] if args else "examples/stack-sample.lp"
    with localcontext() as context:
        context.prec = 60  # exact for these sums: no rounding anywhere
        with open(path, encoding="utf-8") as sample:
            projects = credits(sample, change, steps)
        total = sum(projects.values(), Decimal(0))
    if steps is not None:
        print(json.dumps(steps, indent=1, sort_keys=True))
        return
    document = {
        "projects": {name: str(projects[name]) for name in sorted(projects)},
        "total": str(total),
    }
    print(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
