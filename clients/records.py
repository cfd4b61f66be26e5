"""What every dataset is made of: a Dataset of Records. Its own module so that the built-in corpus
(clients/corpus.py) and the dataset specs (clients/datasets.py, which opens the corpus) both
import it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


class DatasetError(ValueError):
    """A dataset spec that cannot be read; the message says how to fix it."""


@dataclass(frozen=True)
class Record:
    index: int
    key: str
    label: int  # -1: none
    split: Optional[str]  # "train", "validation", "test" or None (the trainer splits by source)
    load: Callable[[], bytes]
    # What the image was made from (a photograph, a semantic group): every image of one source
    # lands on one side of every split, so no test source was ever seen in training.
    source: str = ""

    def __post_init__(self):
        if not self.source:
            object.__setattr__(self, "source", self.key)


@dataclass
class Dataset:
    spec: str
    label_names: list[str]
    count: int
    record: Callable[[int], Record]

    def __len__(self) -> int:
        return self.count
