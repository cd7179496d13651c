"""What exact JSON costs the common path: our `loads`/`dumps` against bare orjson.

`loads` scans the raw bytes for a run of 19 digits before handing them to orjson (every
integer orjson can't hold has one); `dumps` looks for NaN only when a null came out. This
prints, per message size, the time of each and the ratio (target: small messages within
a few hundred nanoseconds of orjson; the whole of a call costs tens of microseconds).

    python benchmarks/json_exact.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import timeit

import orjson

from micromessaging._json import DUMPS_OPTIONS, dumps, loads

REQUEST = {"jsonrpc": "2.0", "method": "add", "params": [1, 5.1], "id": "9f0c2e1d4b6a7788.42"}
RESPONSE_NULL = {"jsonrpc": "2.0", "result": None, "id": "9f0c2e1d4b6a7788.42"}


def payload(size: int) -> dict[str, object]:
    rows = [{"name": f"row {i}", "value": i * 1.5, "ok": True, "tags": ["a", "b"]}
            for i in range(max(1, size // 60))]  # fmt: skip
    return {"jsonrpc": "2.0", "method": "store", "params": [rows], "id": "9f0c2e1d4b6a7788.42"}


def best(statement: object, number: int, rounds: int) -> float:
    return min(timeit.repeat(statement, number=number, repeat=rounds)) / number  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    cases = [("request, 80 B", REQUEST), ("result null", RESPONSE_NULL)]
    cases += [(f"params, {size // 1024} KiB", payload(size)) for size in (1024, 65536, 1 << 20)]
    print(f"{'message':<18} {'op':<6} {'orjson':>10} {'ours':>10} {'ratio':>6}")
    for name, value in cases:
        data = orjson.dumps(value, option=DUMPS_OPTIONS)
        number = max(10, 2_000_000 // max(len(data), 1))
        for op, bare, ours in (
            ("loads", lambda d=data: orjson.loads(d), lambda d=data: loads(d)),
            ("dumps", lambda v=value: orjson.dumps(v, option=DUMPS_OPTIONS),
             lambda v=value: dumps(v)),
        ):  # fmt: skip
            base, mine = best(bare, number, rounds), best(ours, number, rounds)
            print(
                f"{name:<18} {op:<6} {base * 1e6:>8.2f}us {mine * 1e6:>8.2f}us {mine / base:>5.2f}x"
            )
    big = b'{"jsonrpc":"2.0","method":"m","params":[%d],"id":1}' % (2**70)
    number = 100_000
    print(f"{'2**70 param':<18} {'loads':<6} {'(exact path)':>10} "
          f"{best(lambda: loads(big), number, rounds) * 1e6:>8.2f}us")  # fmt: skip


if __name__ == "__main__":
    main()
