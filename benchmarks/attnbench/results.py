"""Result records and the JSON file that keeps every number of a run."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .grid import Shape

# status of a record: "ok" carries a time; the others carry the reason in `detail`.
OK, UNSUPPORTED, OOM, ERROR, SKIPPED = "ok", "unsupported", "oom", "error", "skipped"
STATUSES = (OK, UNSUPPORTED, OOM, ERROR, SKIPPED)

SCHEMA = "fa_inductor.attention_benchmark/1"


@dataclass
class Record:
    """One implementation timed at one point of the grid, or why it was not."""

    impl: str  # stable id: fa, sdpa-flash, sdpa-cudnn, sdpa-efficient, flex
    label: str  # what ran, e.g. fa(sm80); equals impl for the peers
    head_dim: int
    seqlen: int
    causal: bool
    direction: str
    batch: int
    heads: int
    status: str
    flops: float = 0.0
    ms: float | None = None  # median
    ms_p20: float | None = None
    ms_p80: float | None = None
    tflops: float | None = None
    method: str = ""  # how the time was taken (see meta["timing"])
    rounds: int = 1  # timing rounds whose repetitions the numbers pool
    warmup_s: float | None = None  # first calls: compilation, autotuning, handle creation
    rel_err: float | None = None  # ours only: ||out - ref|| / ||ref|| against an fp32 SDPA
    detail: str = ""

    @property
    def shape(self) -> Shape:
        return Shape(self.head_dim, self.seqlen, self.causal, self.batch, self.heads)

    @property
    def panel(self) -> tuple[int, bool, str]:
        return (self.head_dim, self.causal, self.direction)


@dataclass
class AblationRecord:
    variant: str
    causal: bool
    status: str
    ms: float | None = None
    tflops: float | None = None
    detail: str = ""


@dataclass
class Run:
    meta: dict = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    ablation: list[AblationRecord] = field(default_factory=list)
    ablation_note: str = ""

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "meta": self.meta,
            "records": [asdict(r) for r in self.records],
            "ablation": {"note": self.ablation_note,
                         "records": [asdict(r) for r in self.ablation]},
        }

    @classmethod
    def from_json(cls, data: dict) -> "Run":
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not an attention benchmark result (schema {data.get('schema')!r})")
        known = {f.name for f in fields(Record)}
        records = [Record(**{k: v for k, v in r.items() if k in known}) for r in data["records"]]
        abl = data.get("ablation") or {}
        ablation = [AblationRecord(**r) for r in abl.get("records", [])]
        return cls(meta=dict(data.get("meta", {})), records=records, ablation=ablation,
                   ablation_note=abl.get("note", ""))


def merge_runs(runs: list[Run]) -> Run:
    """Several partial runs (say one per head dim) as one; a later run's point replaces an
    earlier run's for the same implementation, point and direction."""
    if not runs:
        raise ValueError("nothing to merge")
    by_key: dict[tuple, Record] = {}
    for run in runs:
        for r in run.records:
            by_key[(r.impl, r.head_dim, r.seqlen, r.causal, r.direction)] = r
    merged = Run(meta=dict(runs[0].meta), records=list(by_key.values()))
    devices = sorted({str(r.meta.get("device")) for r in runs})
    if len(devices) > 1:
        merged.meta["device"] = " + ".join(devices)
        merged.meta["warning"] = ("merged runs from different devices: ratios across them "
                                  "mean little")
    for run in runs:
        if run.ablation:
            merged.ablation, merged.ablation_note = run.ablation, run.ablation_note
    if not merged.ablation_note:
        merged.ablation_note = next((r.ablation_note for r in runs if r.ablation_note), "")
    return merged


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "unknown"


def result_stem(device: str, dtype: str, quick: bool = False) -> str:
    """File name (without extension) of a run: the device first, so runs on different cards
    never overwrite each other; smoke runs never overwrite a full run."""
    return f"attention_{slug(device)}_{dtype}" + ("_quick" if quick else "")


def write_json(run: Run, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(run.to_json(), indent=1, sort_keys=False) + "\n")
    tmp.replace(path)  # a run killed mid-write leaves the previous complete file
    return path


def read_json(path: Path) -> Run:
    return Run.from_json(json.loads(Path(path).read_text()))
