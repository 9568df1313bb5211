"""A model of the warp-specialised 16-row FP8 tile's synchronisation (kernels/v5_fp8_ws16.py), run on the CPU.

Gluon has no interpreter, and a wrong mbarrier phase in that tile is a hang on the GPU, not an error. So its three
partitions' control flow is written here again as Python generators over the same barriers, waits and arrivals, and
run under many random interleavings: every interleaving must finish (no deadlock), every page must be read from its
slot while the slot holds it (no overwrite before the read), warpgroup 0 must merge warpgroup 1's state of the same
request, and TMA copies must land only in free raw slots. The model mirrors the kernel's loops line for line; a
change to the kernel's protocol must change this model too.
"""

from __future__ import annotations

import random

import pytest


class Barrier:
    """An mbarrier: `count` arrivals complete a phase; wait(parity) passes once the phase of that parity is complete
    (the current phase's parity differs), so a fresh barrier passes wait(1)."""

    def __init__(self, count: int = 1):
        self.count, self.pending, self.phase = count, 0, 0

    def arrive(self):
        self.pending += 1
        assert self.pending <= self.count
        if self.pending == self.count:
            self.pending, self.phase = 0, self.phase + 1

    def passes(self, parity: int) -> bool:
        return (self.phase & 1) != parity


def run(requests: list[tuple[int, int]], seed: int) -> dict:
    """Run the three partitions over one program's requests [(lo, hi) pages] under a random interleaving."""
    rng = random.Random(seed)
    bars = {name: Barrier(2 if name == "Q_EMPTY" else 1) for name in
            ("RAW0", "RAW1", "FULL0", "FULL1", "EMPTY0", "EMPTY1", "Q_READY", "Q_EMPTY", "MERGE_READY", "MERGE_FREE")}
    raw = [None, None]  # what each raw half-page slot holds: (page, half) once its copy landed
    raw_busy = [False, False]  # a copy is in flight or its data not yet read
    slot = [None, None]  # the page each bf16 slot holds
    in_flight = []  # TMA copies: (raw slot, (page, half))
    merged = []  # (request, what warpgroup 1 handed over)
    log = {"pages_read": [], "merged": merged}

    def tma(h, page):
        assert not raw_busy[h], f"a copy into raw slot {h} while it is still in use"
        raw_busy[h] = True
        in_flight.append((h, (page, h)))

    def producer():
        it = 0
        for lo, hi in requests:
            if lo < hi:
                for h in range(2):
                    tma(h, lo)
            for i in range(lo, hi):
                s = it % 2
                yield ("wait", f"EMPTY{s}", ((it // 2) & 1) ^ 1)
                for h in range(2):
                    yield ("wait", f"RAW{h}", it & 1)
                    assert raw[h] == (i, h), f"raw slot {h} holds {raw[h]}, not page {i}'s half {h}"
                    slot[s] = i  # the dequantized half into the bf16 slot
                    raw_busy[h] = False
                    yield ("step",)
                    if i + 1 < hi:
                        tma(h, i + 1)
                bars[f"FULL{s}"].arrive()
                it += 1

    def consumer(wg):
        it, r = 0, 0
        state = None
        for req, (lo, hi) in enumerate(requests):
            if wg == 0:
                yield ("wait", "Q_EMPTY", (r & 1) ^ 1)
                bars["Q_READY"].arrive()
            yield ("wait", "Q_READY", r & 1)
            state = (req, [])
            for i in range(lo, hi):
                if it % 2 == wg:
                    yield ("wait", f"FULL{wg}", (it // 2) & 1)
                    assert slot[wg] == i, f"warpgroup {wg} reads page {i} but slot {wg} holds {slot[wg]}"
                    yield ("step",)  # S, softmax, P·V on the slot
                    assert slot[wg] == i, f"slot {wg} was overwritten while warpgroup {wg} read page {i}"
                    state[1].append(i)
                    log["pages_read"].append((req, i))
                    bars[f"EMPTY{wg}"].arrive()
                it += 1
            bars["Q_EMPTY"].arrive()
            for half in range(2):
                if wg == 1:
                    yield ("wait", "MERGE_FREE", ((2 * r + half) & 1) ^ 1)
                    handover[0] = (state[0], half, tuple(state[1]))
                    bars["MERGE_READY"].arrive()
                else:
                    yield ("wait", "MERGE_READY", (2 * r + half) & 1)
                    got = handover[0]
                    assert got[0] == req and got[1] == half, f"warpgroup 0 merges {got} in request {req}, half {half}"
                    merged.append((req, half, got[2]))
                    bars["MERGE_FREE"].arrive()
            r += 1

    handover = [None]
    agents = {"producer": producer(), "wg0": consumer(0), "wg1": consumer(1)}
    waiting = {name: None for name in agents}
    steps = 0
    while agents:
        steps += 1
        assert steps < 100_000
        if in_flight and rng.random() < 0.3:  # a copy lands
            h, what = in_flight.pop(rng.randrange(len(in_flight)))
            raw[h] = what
            bars[f"RAW{h}"].arrive()
        runnable = [n for n in agents if waiting[n] is None or bars[waiting[n][0]].passes(waiting[n][1])]
        if not runnable:
            assert in_flight, f"deadlock: {waiting}"
            continue
        name = rng.choice(runnable)
        waiting[name] = None
        try:
            op = next(agents[name])
        except StopIteration:
            del agents[name]
            continue
        if op[0] == "wait":
            waiting[name] = (op[1], op[2])
    assert not in_flight, "a copy outlives the program"
    return log


REQUESTS = [
    [(0, 5)],  # one request, odd pages
    [(0, 4), (0, 1), (0, 0), (2, 7)],  # even, one page, empty, a split piece
    [(0, 0), (0, 0)],  # only empty requests
    [(0, 1)] * 5,  # one page each: the parity of the slots shifts every request
    [(3, 9), (0, 2), (0, 3)],
]


@pytest.mark.parametrize("requests", REQUESTS)
@pytest.mark.parametrize("seed", range(40))
def test_ws16_protocol_finishes_and_reads_every_page_in_place(requests, seed):
    log = run(requests, seed)
    expected = [(r, i) for r, (lo, hi) in enumerate(requests) for i in range(lo, hi)]
    assert sorted(log["pages_read"]) == expected
    # warpgroup 0 merged warpgroup 1's state of each request twice (two halves of the columns), in order, and
    # warpgroup 1 had read exactly its pages (odd pages of the program's running count)
    assert [(r, h) for r, h, _ in log["merged"]] == [(r, h) for r in range(len(requests)) for h in (0, 1)]
    count = 0
    for r, (lo, hi) in enumerate(requests):
        odd = tuple(i for k, i in enumerate(range(lo, hi)) if (count + k) % 2 == 1)
        assert all(pages == odd for rr, _, pages in log["merged"] if rr == r)
        count += max(hi - lo, 0)
