"""The probe tasks, each declared once here; the trainer, baselines, report and deploy look a task
up (`get_task`) and read what it declares instead of branching on its name.

A task says which catalog's stores it reads, its heads (each head's name and where its classes
and labels come from), which extra metrics training records, what the report shows of it, and
whether its probe can be a part of the served detector. This module imports nothing heavy: the
CLI can take the task names and their help from `TASKS` without importing torch.

    fine       31-way transformation (the fine catalog's rows); the detector's figures
    general    10-way category, trained on the seen sub-transformations, tested on all
    semantic   the dataset's label, on stores of any catalog
    multitask  transformation and semantic heads on one hidden layer, against a semantic-only probe
    detect     one class per row of the detection catalog; the detector's figures, served in fine's place
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

# Where a head's class names and each example's label come from:
#   "rows"         the store's rows (one class per stored version; the label is the version)
#   "classes"      the store's classes (the label is the version's row_labels entry)
#   "label_names"  the dataset's semantic labels (the label is the image's)
IDENTITY = "identity"  # every catalog's unedited version: what a detector tells the others from
LabelSource = Literal["rows", "classes", "label_names"]


@dataclass(frozen=True)
class Head:
    name: str  # as probe.json's "heads" names it
    source: LabelSource

    @property
    def semantic(self) -> bool:
        return self.source == "label_names"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    help: str  # one line, for the CLI
    title: str  # how messages name it
    catalog: Optional[str]  # the catalog of the stores it reads; None: any catalog
    heads: tuple[Head, ...]
    held_out: bool = False  # trained on the rows the store's row_splits say "train", tested on all
    held_out_families: tuple[str, ...] = ()  # metrics held_out_<family>_accuracy (held-out rows of the family)
    per_style: bool = False  # metric per_style_accuracy, seen and held out (report: Table 2)
    semantic_only: bool = False  # a semantic-only probe on the same split and seeds, compared (report section)
    detector: bool = False  # train saves the detector's scores and card (where a class is identity)
    # deploy takes it as a part of the served detector: its probe's rows as TRANSFORM_PROBS (one
    # such probe, the detector's), or its classes as CATEGORY_PROBS (at most one)
    deploys_as: Optional[Literal["transformations", "categories"]] = None
    softmax_geed: bool = False  # the report measures the probe's softmax G-EED
    per_transformation_plot: bool = False  # in the report's accuracy-per-transformation plot
    table1: tuple[tuple[str, str], ...] = ()  # the report's Table 1 cells it fills: (column, summary metric)

    @property
    def semantic(self) -> bool:
        """Needs the images' semantic labels."""
        return any(h.semantic for h in self.heads)

    @property
    def detector_part(self) -> bool:
        """Deploy takes it as a part of the served detector."""
        return self.deploys_as is not None


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("fine", "31-way transformation", "the fine-grained task", "fine", (Head("fine", "rows"),),
             detector=True, deploys_as="transformations", softmax_geed=True, per_transformation_plot=True,
             table1=(("fine", "test_accuracy"),)),
    TaskSpec("general", "10-way category", "the generalization task", "general", (Head("general", "classes"),),
             held_out=True, held_out_families=("noise", "style"), per_style=True, deploys_as="categories",
             softmax_geed=True, table1=(("general", "test_accuracy"), ("held_out_noise", "held_out_noise_accuracy"),
                                        ("held_out_style", "held_out_style_accuracy"))),
    TaskSpec("semantic", "the dataset's label", "the semantic task", None, (Head("semantic", "label_names"),)),
    TaskSpec("multitask", "transformation and semantic heads on one hidden layer, compared with a semantic-only "
             "probe", "the multitask task", "fine", (Head("transformation", "rows"), Head("semantic", "label_names")),
             semantic_only=True, per_transformation_plot=True),
    TaskSpec("detect", "one class per detection-catalog row (every fine kind from mild to strong, and everyday "
             "edits): the detector trained for uploads", "the detection task", "detect", (Head("detect", "rows"),),
             detector=True, deploys_as="transformations", per_transformation_plot=True),
)}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; use one of {', '.join(TASKS)}") from None


def spoken(names: list[str]) -> str:
    """"a, b or c"."""
    return " or ".join(filter(None, (", ".join(names[:-1]), names[-1]))) if names else ""
