"""The WIT side of a Python policy: what ``componentize-py`` exports for
``os-credits:pricing@2.0.0``. Batches arrive in columns (one text, byte
offsets, timestamps, tag counts) and charges go back the same way, one
failure per step. The column logic is plain Python (tested natively); the
generated bindings (``wit_world``, ``componentize_py_types``) are imported
only inside the component."""

from __future__ import annotations

from decimal import Decimal
from itertools import accumulate
from typing import Callable, Optional, Sequence

from os_credits_pricing import (
    Measurement,
    Policy,
    PricingError,
    Usage,
    decimal_text,
    parse_config,
    parse_decimal,
)

#: Strings per step before its tags: metric, project, location-id, previous
#: value, current value.
_FIXED = 5


def unpack(text: str, ends: Sequence[int], timestamps: Sequence[int], tag_counts: Sequence[int]) -> list[Usage]:
    """The steps of a batch; ``ValueError`` if its columns do not fit."""
    steps = len(tag_counts)
    if len(timestamps) != 2 * steps:
        raise ValueError(f"{len(timestamps)} timestamps for {steps} steps")
    if len(ends) != _FIXED * steps + 2 * sum(tag_counts):
        raise ValueError(f"{len(ends)} strings do not fit the steps' tag counts")
    ascii = text.isascii()
    if ends and (ends[-1] > (len(text) if ascii else len(text.encode("utf-8"))) or sorted(ends) != list(ends)):
        raise ValueError("string offsets out of order or past the text")
    starts = [0, *ends[:-1]]
    if ascii:
        # Byte offsets are character offsets: slice the text itself.
        strings = [text[a:b] for a, b in zip(starts, ends)]
    else:
        data = text.encode("utf-8")
        strings = [data[a:b].decode("utf-8") for a, b in zip(starts, ends)]
    if not any(tag_counts):
        # The common case (a policy that reads no tags): five strings a step.
        it = iter(strings)
        times = iter(timestamps)
        return [
            Usage(metric, project, location_id, Measurement(t0, previous), Measurement(t1, current), {})
            for (metric, project, location_id, previous, current), t0, t1 in zip(
                zip(it, it, it, it, it), times, times
            )
        ]
    usages = []
    at = 0
    for index, count in enumerate(tag_counts):
        metric, project, location_id, previous, current = strings[at : at + _FIXED]
        at += _FIXED
        tags = {strings[at + 2 * k]: strings[at + 2 * k + 1] for k in range(count)}
        at += 2 * count
        usages.append(
            Usage(
                metric,
                project,
                location_id,
                Measurement(timestamps[2 * index], previous),
                Measurement(timestamps[2 * index + 1], current),
                tags,
            )
        )
    return usages


def charge_text(bill: Callable[[Usage], Decimal], usage: Usage) -> tuple[str, bool]:
    """One step's text and whether it is an error message."""
    try:
        charge = bill(usage)
        if not isinstance(charge, Decimal):
            raise PricingError(f"bill returned {type(charge).__name__}, not a Decimal")
        if charge < 0:
            raise PricingError(f"bill returned a negative charge {charge}")
        return decimal_text(charge), False
    except PricingError as e:
        return str(e), True
    except MemoryError:
        # The host's memory cap refused to grow the heap: this step fails,
        # what it allocated is garbage, the instance goes on.
        return "MemoryError: out of memory (the policy's memory cap)", True
    except Exception as e:  # a bug: this step fails, the batch goes on
        return f"{type(e).__name__}: {e}", True


def pack(texts: Sequence[tuple[str, bool]]) -> tuple[str, list[int], list[int]]:
    """Charges in columns: the texts back to back, their byte ends, the
    indices of the failed ones."""
    parts = [text for text, _ in texts]
    joined = "".join(parts)
    if joined.isascii():
        # Charges are ASCII: a text's length is its length in bytes.
        ends = list(accumulate(map(len, parts)))
    else:
        ends = list(accumulate(len(text.encode("utf-8")) for text in parts))
    failed = [index for index, (_, is_error) in enumerate(texts) if is_error]
    return joined, ends, failed


def bill_columns(
    bill: Callable[[Usage], Decimal],
    text: str,
    ends: Sequence[int],
    timestamps: Sequence[int],
    tag_counts: Sequence[int],
) -> tuple[str, list[int], list[int]]:
    """A batch in columns billed step by step; a malformed batch fails
    every step, with the reason."""
    try:
        usages = unpack(text, ends, timestamps, tag_counts)
    except (ValueError, UnicodeDecodeError) as e:
        reason = f"malformed batch: {e}"
        return pack([(reason, True)] * len(tag_counts))
    return pack([charge_text(bill, usage) for usage in usages])


def exported(policy: type[Policy]) -> type:
    """The class implementing the WIT interface ``policy`` for ``policy``."""
    state: dict[str, Optional[Policy]] = {"instance": None}

    def instance() -> Policy:
        current = state["instance"]
        if current is None:
            current = policy({})
            state["instance"] = current
        return current

    class Exported:
        def describe(self):
            from wit_world.imports import types

            try:
                metrics = instance().describe_metrics()
            except Exception:
                metrics = policy.metrics
            return types.PolicyInfo(
                name=policy.name,
                version=policy.version,
                description=policy.description,
                metrics=[
                    types.MetricInfo(m.name, m.friendly_name, m.unit, m.description, m.amount_type)
                    for m in metrics
                ],
                tags=None if policy.tags is None else sorted(policy.tags),
            )

        def configure(self, config: str) -> None:
            from componentize_py_types import Err

            try:
                state["instance"] = policy(parse_config(config))
            except Exception as e:
                raise Err(str(e))

        def bill(self, batch):
            from wit_world.imports import types

            text, ends, failed = bill_columns(
                instance().bill, batch.text, batch.ends, batch.timestamps, batch.tag_counts
            )
            return types.Charges(text=text, ends=ends, failed=failed)

        def cost_per_hour(self, metric: str, amount: str, at_ns: int) -> str:
            from componentize_py_types import Err

            try:
                return decimal_text(instance().cost_per_hour(metric, parse_decimal(amount), at_ns))
            except Exception as e:
                raise Err(str(e))

        def examples(self):
            from wit_world.imports import types

            out = []
            for example in instance().examples():
                usage = example.usage
                out.append(
                    types.Example(
                        name=example.name,
                        usage=types.Usage(
                            metric=usage.metric,
                            project=usage.project,
                            location_id=usage.location_id,
                            tags=[types.Tag(k, v) for k, v in sorted(usage.tags.items())],
                            previous=types.Measurement(usage.previous.timestamp_ns, usage.previous.value),
                            current=types.Measurement(usage.current.timestamp_ns, usage.current.value),
                        ),
                        expected=decimal_text(example.expected),
                    )
                )
            return out

    Exported.__name__ = "Policy"
    Exported.__qualname__ = "Policy"
    return Exported
