"""probe.json, the record of a trained probe, as one type: `ProbeRecord.write(dir)` is how the
trainer and the baselines save it, `ProbeRecord.read(path)` how the report, deploy, the demo and
`trainer.probes.load_probe` read it.

The keys written are the fields below, in this order; an optional field left at None is not
written (a torch probe has no "selection", a baseline no "detector"), so the JSON is what the
trainer wrote by hand before. Reading takes older records: only `REQUIRED` keys must be there,
and keys this type does not know are kept and written back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

FILE = "probe.json"
REQUIRED = ("task", "kind", "dim", "classes", "catalog", "catalog_version", "encoder", "encoder_onnx_sha256")


class ProbeRecordError(ValueError):
    """probe.json missing, not JSON, or without a required key; the message says which in one line."""


@dataclass(kw_only=True)
class ProbeRecord:
    kind: str  # linear, mlp, logreg or knn
    task: str  # a trainer.tasks name
    dim: int  # the probe's input width: the embedding's, plus features_dim where it reads FEATURES
    classes: list[str]
    features_dim: Optional[int] = None  # FEATURES' width where the probe reads them beside the embedding
    heads: Optional[list[dict]] = None  # [{"name", "classes"}] per head
    split: Optional[str] = None  # "store" or "hash"
    catalog: str
    catalog_version: str
    rows: Optional[list[str]] = None
    encoder: str
    encoder_onnx_sha256: str
    store: Optional[str] = None
    config: Optional[dict] = None
    seeds: Optional[list[int]] = None
    saved_seed: Optional[int] = None
    images: Optional[dict] = None  # {"train", "val", "test"} image counts
    deployable: Optional[bool] = None  # probe.pt takes raw embeddings (the knn baseline saves none)
    selection: Optional[dict] = None  # baselines: the hyperparameter grid and its validation accuracy
    summary: Optional[dict] = None  # mean and std over seeds of every scalar metric
    runs: Optional[list[dict]] = None  # metrics per seed
    detector: Optional[dict] = None  # fine probes: the detector card
    extra: dict[str, Any] = field(default_factory=dict)  # keys this type does not know, kept as read

    @classmethod
    def from_dict(cls, values: dict, where: str = FILE) -> "ProbeRecord":
        missing = [key for key in REQUIRED if key not in values]
        if missing:
            raise ProbeRecordError(f"{where} lacks {', '.join(missing)}")
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in values.items() if k in known},
                   extra={k: v for k, v in values.items() if k not in known})

    def as_dict(self) -> dict:
        """probe.json's content: the fields in order, None ones left out, then the unknown keys."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}

    @classmethod
    def read(cls, path) -> "ProbeRecord":
        """From a probe directory or its probe.json."""
        path = Path(path)
        file = path if path.suffix == ".json" else path / FILE
        if not file.is_file():
            raise ProbeRecordError(f"{path} is not a probe directory (no {FILE}); train one with `equiprobe train`")
        try:
            values = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ProbeRecordError(f"{file} is not readable JSON: {exc}") from None
        return cls.from_dict(values, str(file))

    def write(self, directory) -> Path:
        file = Path(directory) / FILE
        file.write_text(json.dumps(self.as_dict(), indent=2))
        return file

    @property
    def head_classes(self) -> list[list[str]]:
        """Each head's class names (records without "heads" have one head: `classes`)."""
        return [h["classes"] for h in self.heads] if self.heads else [self.classes]
