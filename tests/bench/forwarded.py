"""Hello behind a trusted proxy: every request carries X-Forwarded-For, as HAProxy's
``option forwardfor`` sends it (127.0.0.1 is a trusted proxy by default), against the same
requests without it. Not run by CI.

    python -m tests.bench.forwarded [--rounds 5] [--seconds 4] [--baseline DIR]

Two workers; wrk -t1 -c64 on keep-alive connections; interleaved rounds; requests per server
CPU-second, and each server's forwarded rate as a share of its plain one. ``--baseline``: another
greenserve checkout (a git worktree) run alongside.
"""

from __future__ import annotations

import statistics
import sys

from tests.bench.run import (
    Contender,
    baseline_contenders,
    bench_arguments,
    greenserve_command,
    parse_bench,
    wrk_rounds,
)

HELLO = "greenserve.worker.apps:hello"
FORWARDED = ("-H", "X-Forwarded-For: 198.18.0.9")


def main() -> None:
    args = parse_bench(bench_arguments(__doc__))
    command = greenserve_command(HELLO)
    contenders = [Contender("greenserve", command), *baseline_contenders("greenserve", command)]
    print("hello, 2 workers, wrk -t1 -c64, plain", flush=True)
    plain = wrk_rounds(contenders, args.rounds, 64, args.seconds)
    print("the same with X-Forwarded-For from a trusted peer", flush=True)
    forwarded = wrk_rounds(contenders, args.rounds, 64, args.seconds, *FORWARDED)
    print("medians, requests per server CPU-second (plain / forwarded / forwarded's share):")
    for name in plain:
        ours, theirs = statistics.median(plain[name]), statistics.median(forwarded[name])
        print(f"  {name:24s} {ours:>9,.0f} {theirs:>9,.0f} {theirs / ours:6.2f}")
    if len(contenders) > 1:
        base = contenders[1].name
        ratios = [a / b for a, b in zip(forwarded["greenserve"], forwarded[base], strict=True)]
        print(
            f"forwarded, greenserve / {base}: median {statistics.median(ratios):.2f}x "
            f"(rounds {' '.join(f'{r:.2f}' for r in ratios)})"
        )


if __name__ == "__main__":
    sys.exit(main())
