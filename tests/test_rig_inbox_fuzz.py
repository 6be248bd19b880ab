"""Fuzzing the rig inbox parser: thousands of hostile inbox files, fed in random chunks.

For every file: no exception escapes, every non-blank line is either used or rejected exactly
once, the used lines and the kind of each rejected one are those of a plain reference reading of
the protocol (written here independently), and the responses are the mean of the used trials."""
from __future__ import annotations

import json
import math
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from stimopt_plugins.rig.inbox import MAX_COUNT, MAX_LINE_BYTES, MAX_SPIKE_S, InboxReader

N_FILES = 2000


# -- a plain reference reading of the protocol (docs/neural_targets.md) --------------------------------
def _is_int(v) -> bool:
    return type(v) is int or (type(v) is float and math.isfinite(v) and v == int(v))


def reference_spikes(rec: dict, c: int, window, baseline_window):
    """stimopt-rig/2: (window counts, baseline counts) from "spikes", or the kind of a rejected line."""
    if "count" in rec or "counts" in rec or window is None:
        return "malformed"
    trains = rec["spikes"]
    if type(trains) is not list or len(trains) != c:
        return "malformed"
    counts, base = [], []
    for times in trains:  # channel by channel: the first bad channel decides
        if type(times) is not list or any(type(t) not in (int, float) for t in times):
            return "malformed"
        try:
            ts = [float(t) for t in times]
        except OverflowError:
            return "invalid"
        if not all(abs(t) <= MAX_SPIKE_S for t in ts):  # NaN fails this too
            return "invalid"
        counts.append(float(sum(window[0] <= t < window[1] for t in ts)))
        if baseline_window:
            base.append(float(sum(baseline_window[0] <= t < baseline_window[1] for t in ts)))
    return counts, (base if baseline_window else None)


def reference_kind(text: bytes, g: int, rid: str, n: int, c: int, window=None, baseline_window=None):
    """'done', ('trial', index, repeat, counts[, baseline]) or the kind of a rejected line."""
    try:
        rec = json.loads(text)
    except Exception:  # noqa: BLE001
        return "malformed"
    if type(rec) is not dict or "generation" not in rec or not _is_int(rec["generation"]):
        return "malformed"
    if type(rec.get("request_id", rid)) is not str:
        return "malformed"
    if int(rec["generation"]) != g or rec.get("request_id", rid) != rid:
        return "other_generation"
    if "done" in rec:
        return "done" if rec["done"] is True else "malformed"
    index, repeat = rec.get("index"), rec.get("repeat", 0)
    if not (_is_int(index) and 0 <= index < n and _is_int(repeat) and repeat >= 0):
        return "malformed"
    if "spikes" in rec:
        got = reference_spikes(rec, c, window, baseline_window)
        return got if isinstance(got, str) else ("trial", int(index), int(repeat), got[0], got[1])
    if ("count" in rec) == ("counts" in rec):
        return "malformed"
    counts = rec["counts"] if "counts" in rec else [rec["count"]]
    if type(counts) is not list or len(counts) != c or any(type(v) not in (int, float) for v in counts):
        return "malformed"
    for v in counts:
        try:
            f = float(v)
        except OverflowError:
            return "invalid"
        if not (0 <= f <= MAX_COUNT):  # NaN fails this too
            return "invalid"
    return ("trial", int(index), int(repeat), [float(v) for v in counts])


def reference(data: bytes, g, rid, n, c, repeats, window=None, baseline_window=None):
    lines = data.split(b"\n")
    terminated = [True] * (len(lines) - 1) + [False]  # the piece after the last newline is unterminated
    used, kinds, seen, per_image, done = [], {}, set(), [0] * n, False
    sums, base_sums, base_cnt = np.zeros((n, c)), np.zeros((n, c)), np.zeros(n)
    for no, (raw, term) in enumerate(zip(lines, terminated), 1):
        text = raw.strip()
        if len(raw) > MAX_LINE_BYTES:
            kinds[no] = "malformed" if term else "truncated"
            continue
        if not text:
            continue
        if done:
            kinds[no] = "after_done"
            continue
        got = reference_kind(text, g, rid, n, c, window, baseline_window)
        if got == "done":
            done = True
        elif isinstance(got, str):
            kinds[no] = "truncated" if got == "malformed" and not term else got
        elif (got[1], got[2]) in seen:
            kinds[no] = "duplicates"
        else:
            seen.add((got[1], got[2]))
            if per_image[got[1]] >= repeats:
                kinds[no] = "extra"
            else:
                per_image[got[1]] += 1
                sums[got[1]] += got[3]
                if len(got) > 4 and got[4] is not None:
                    base_sums[got[1]] += got[4]
                    base_cnt[got[1]] += 1
                used.append(no)
    cnt = np.array(per_image, float)
    with np.errstate(invalid="ignore"):
        means = np.where(cnt[:, None] > 0, sums / np.maximum(cnt, 1)[:, None], np.nan)
        base = np.where(base_cnt[:, None] > 0, base_sums / np.maximum(base_cnt, 1)[:, None], np.nan)
    return used, kinds, means, base


# -- hostile lines ---------------------------------------------------------------------------------
UNICODE = ["é", "日本", "\u202e", "\ufeff", "\x00", "\ud800", "𝟙", "ı", "\u2028"]


class Lab:
    """Writes a generation's file the way a buggy lab would; knows what each line was meant to be."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.n, self.c, self.repeats = rng.randint(1, 6), rng.randint(1, 3), rng.randint(1, 3)
        self.g, self.rid = rng.randint(0, 3), "%016x" % rng.getrandbits(64)
        self.slots = [(i, r) for i in range(self.n) for r in range(4)]
        rng.shuffle(self.slots)
        self.fresh = 4  # repeat numbers past the shuffled ones: every trial made has its own (index, repeat)
        self.valid: list[str] = []
        # stimopt-rig/2 in a third of the files: spike times counted in a window (and a baseline)
        self.window = (0.05, 0.2) if rng.random() < 0.33 else None
        self.baseline_window = (-0.1, 0.0) if self.window and rng.random() < 0.6 else None

    def spikes(self) -> list[list[float]]:
        r = self.rng
        return [sorted(round(r.uniform(-0.2, 0.4), 4) for _ in range(r.randint(0, 12))) for _ in range(self.c)]

    def rec(self, index=None, repeat=None, counts=None, **extra) -> dict:
        r = self.rng
        if index is None:
            if self.slots:
                index, repeat = self.slots.pop()
            else:
                index, repeat, self.fresh = r.randrange(self.n), self.fresh, self.fresh + 1
        rec = {"generation": self.g, "index": index, "repeat": repeat, "counts": counts or [r.randint(0, 30) for _ in range(self.c)]}
        if r.random() < 0.2:
            rec["request_id"] = self.rid
        if r.random() < 0.2:
            rec["note"] = r.choice(UNICODE) * r.randint(1, 3)
        if r.random() < 0.1:
            rec["generation"] = float(self.g)
        if self.window and r.random() < 0.6:
            rec.pop("counts")
            rec["spikes"] = self.spikes()
        elif self.c == 1 and r.random() < 0.2:
            rec["count"] = rec.pop("counts")[0]
        rec.update(extra)
        keys = list(rec)
        r.shuffle(keys)
        return {k: rec[k] for k in keys}

    def dump(self, rec) -> str:
        return json.dumps(rec, ensure_ascii=self.rng.random() < 0.5)

    def good(self) -> str:
        line = self.dump(self.rec())
        self.valid.append(line)
        return line

    def bad(self) -> list[str]:
        r, base = self.rng, self.dump(self.rec())
        kind = r.randrange(18)
        if kind == 0:  # truncation
            return [base[: r.randrange(1, len(base))]]
        if kind == 1:  # two objects on one line
            return [base + r.choice(["", ",", " ", "\t"]) + self.dump(self.rec())]
        if kind == 2:  # a value split over two lines
            return ["[" + base, self.dump(self.rec()) + "]"]
        if kind == 3:  # wrong index/repeat types
            key, value = r.choice([("index", 1.9), ("index", True), ("index", "1"), ("index", None), ("index", [0]),
                                   ("index", -1), ("index", self.n), ("index", 1e20), ("repeat", 0.5), ("repeat", False),
                                   ("repeat", -1), ("repeat", "0"), ("generation", True), ("generation", str(self.g))])
            rec = self.rec()
            rec[key] = value
            return [self.dump(rec)]
        if kind == 4:  # counts of the wrong form
            rec = self.rec()
            rec.pop("count", None)
            rec["counts"] = r.choice([[True] * self.c, ["5"] * self.c, [5] * (self.c + 1), [], {}, None, "5", [[5]] * self.c])
            return [self.dump(rec)]
        if kind == 5:  # counts out of range: NaN, Infinity, negative, huge
            value = r.choice(["NaN", "Infinity", "-Infinity", "-1", "-0.5", "1e308", "1e400", "9" * 400, str(MAX_COUNT * 2)])
            counts = [str(r.randint(0, 9))] * self.c
            counts[r.randrange(self.c)] = value
            return [self.dump(self.rec()).replace('"counts"', '"x"').rstrip("}") + ', "counts": [' + ", ".join(counts) + "]}"]
        if kind == 6:  # deep nesting
            return [r.choice(["[", "{", '{"a":', "[{"]) * r.choice([1000, 5000, 100_000])]
        if kind == 7:  # not an object
            return [r.choice(["5", '"x"', "null", "true", "[1, 2]", "[]", "NaN"])]
        if kind == 8:  # unicode and bytes that are not text
            return [r.choice([r.choice(UNICODE) + base, base.replace('"index"', '"ïndex"'), "\udcff" + base])]
        if kind == 9:
            return [self.dump(self.rec(generation=self.g + 1))]
        if kind == 10:
            return [self.dump(self.rec(request_id="feedfeedfeedfeed"))]
        if kind == 11:
            return [self.dump(self.rec(done=r.choice(["yes", 1, False, None])))]
        if kind == 12 and self.valid:  # duplicate of an earlier valid line
            return [r.choice(self.valid)]
        if kind == 13:  # splice of two lines (may happen to be valid: the reference decides)
            a, b = base, self.dump(self.rec())
            return [a[: r.randrange(len(a))] + b[r.randrange(len(b)):]]
        if kind == 14:  # a flipped character
            k = r.randrange(len(base))
            return [base[:k] + chr(r.randrange(32, 127)) + base[k + 1:]]
        if kind == 16:  # spike times of the wrong form (or without a window, or with counts too)
            rec = self.rec()
            rec["spikes"] = r.choice([self.spikes(), self.spikes() + [[0.1]], [], {}, None, [0.1] * self.c,
                                      [["0.1"]] * self.c, [[True]] * self.c, [[0.1, [0.2]]] * self.c])
            return [self.dump(rec)]
        if kind == 17:  # spike times out of range: NaN, Infinity, far from the onset, huge integers
            value = r.choice(["NaN", "Infinity", "-Infinity", str(MAX_SPIKE_S * 2), "-1e300", "9" * 400, "0.1", "-0.05"])
            trains = [[str(round(r.uniform(0, 0.3), 3))] * r.randint(0, 3) for _ in range(self.c)]
            trains[r.randrange(self.c)].append(value)
            rec = self.rec()
            rec.pop("counts", None), rec.pop("count", None)
            return [self.dump(rec).rstrip("}") + ', "spikes": [' + ", ".join("[" + ", ".join(t) + "]" for t in trains) + "]}"]
        return [r.choice(["", " ", "\t", "\r"])]  # blank


def inbox_file(rng: random.Random) -> tuple[Lab, bytes]:
    lab = Lab(rng)
    lines = []
    for _ in range(rng.randint(0, 25)):
        lines += [lab.good()] if rng.random() < 0.45 else lab.bad()
    if rng.random() < 0.15:
        lines.insert(rng.randint(0, len(lines)), json.dumps({"generation": lab.g, "done": True}))
    if rng.random() < 0.003:
        lines.insert(rng.randint(0, len(lines)), "x" * (MAX_LINE_BYTES + rng.randint(1, 3000)))
    eol = ["\n", "\r\n"]
    text = "".join(line + rng.choice(eol) for line in lines)
    if lines and rng.random() < 0.2:  # a crash mid-line: the file ends without a newline
        text = text.rstrip("\r\n")
    return lab, text.encode("utf-8", "surrogatepass")


def read_in_chunks(path: Path, data: bytes, lab: Lab, rng: random.Random) -> InboxReader:
    reader = InboxReader(path, lab.g, lab.rid, lab.n, lab.c, lab.repeats, window=lab.window,
                         baseline_window=lab.baseline_window)
    cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(0, 4))))
    with open(path, "wb") as f:
        reader.poll()  # before anything is written (the file exists, empty)
        start = 0
        for cut in [*cuts, len(data)]:
            f.write(data[start:cut])
            f.flush()
            start = cut
            reader.poll()
    reader.poll(final=True)
    return reader


def check(reader: InboxReader, lab: Lab, data: bytes) -> tuple[int, int]:
    lines = data.split(b"\n")
    nonblank = [no for no, raw in enumerate(lines, 1) if raw.strip()]
    got_kinds = {e["line"]: e["kind"] for e in reader.rejected}
    # every non-blank line exactly once: used, rejected or a done line
    assert len(got_kinds) == len(reader.rejected), "a line was rejected twice"
    assert not set(got_kinds) & set(reader.used) and len(set(reader.used)) == len(reader.used)
    assert reader.n_lines == len(nonblank) == len(reader.used) + len(reader.rejected) + reader.done_lines
    assert set(got_kinds) | set(reader.used) <= set(nonblank)
    assert all(isinstance(e["reason"], str) and isinstance(e["text"], str) for e in reader.rejected)
    used, kinds, means, base = reference(data, lab.g, lab.rid, lab.n, lab.c, lab.repeats, lab.window, lab.baseline_window)
    assert reader.used == used
    assert got_kinds == kinds
    mean, _ = reader.responses()
    assert np.array_equal(mean, means, equal_nan=True)  # the same sums in the same order: exactly equal
    assert np.array_equal(reader.baselines(), base, equal_nan=True)
    assert sum(reader.stats.values()) == len(reader.used) + len(reader.rejected)
    return len(nonblank), len(used)


def test_thousands_of_hostile_inbox_files(tmp_path):
    rng = random.Random(20261201)
    t0, c0, n_lines, n_used, n_files = time.perf_counter(), time.process_time(), 0, 0, 0
    for k in range(N_FILES):
        lab, data = inbox_file(rng)
        reader = read_in_chunks(tmp_path / f"gen_{k % 7}.jsonl", data, lab, rng)
        lines, used = check(reader, lab, data)
        n_lines, n_used, n_files = n_lines + lines, n_used + used, n_files + 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"\nfuzz: {n_files} inbox files, {n_lines} lines ({n_used} used), {wall:.2f} s wall, {cpu:.2f} s CPU")
    assert n_files == N_FILES and n_used > 1000 and n_lines - n_used > 10_000


def test_the_lab_s_valid_lines_survive_any_hostile_neighbour(tmp_path):
    """Valid lines only ever lose to another valid line (a duplicate or extra), never to a bad one."""
    rng = random.Random(7)
    for k in range(300):
        lab = Lab(rng)
        lab.repeats = 10**6  # room for every trial: each distinct valid one must be used
        lines = []
        for _ in range(rng.randint(1, 20)):
            bad = lab.bad()
            if any(reference_kind(b.encode("utf-8", "surrogatepass").strip(), lab.g, lab.rid, lab.n, lab.c, lab.window,
                                  lab.baseline_window)
                   not in ("malformed", "invalid", "other_generation") for b in bad if b.strip()):
                continue  # this one happened to be valid (a splice, a duplicate) or a done line
            lines += bad + [lab.good()]
        data = "".join(line + "\n" for line in lines).encode("utf-8", "surrogatepass")
        reader = read_in_chunks(tmp_path / "g.jsonl", data, lab, rng)
        used_text = [data.split(b"\n")[no - 1].decode("utf-8", "surrogatepass") for no in reader.used]
        assert used_text == lab.valid
        lab.valid.clear()


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
trial_like = st.fixed_dictionaries(
    {"generation": st.sampled_from([0, 1, 0.0, True, "0", None]), "index": st.one_of(st.integers(-2, 5), json_values),
     "counts": st.one_of(st.lists(st.one_of(st.integers(-5, 10**400), st.floats()), min_size=1, max_size=3), json_values)},
    optional={"repeat": st.one_of(st.integers(-1, 5), json_values), "done": json_values, "request_id": json_values,
              "count": json_values,
              "spikes": st.one_of(st.lists(st.lists(st.one_of(st.floats(), st.integers(-10**5, 10**400)), max_size=4),
                                           max_size=3), json_values)})
line = st.one_of(trial_like.map(json.dumps), json_values.map(json.dumps), st.text(max_size=40),
                 st.binary(max_size=40).map(lambda b: b.decode("latin-1")))


@hypothesis.settings(max_examples=150, deadline=None, database=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(lines=st.lists(line, max_size=12), cut=st.integers(0, 10**6), final_newline=st.booleans())
def test_hypothesis_inbox_lines(lines, cut, final_newline):
    text = "\n".join(x.replace("\n", " ").replace("\r", " ") for x in lines) + ("\n" if final_newline else "")
    data = text.encode("utf-8", "surrogatepass")
    lab = Lab(random.Random(cut))
    lab.g, lab.rid = 0, "%016x" % 1
    with tempfile.TemporaryDirectory() as d:
        reader = read_in_chunks(Path(d) / "g.jsonl", data, lab, random.Random(cut))
    check(reader, lab, data)
