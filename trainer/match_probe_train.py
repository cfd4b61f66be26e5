"""`equiprobe index train-probe`: trains the reference-aware probe (trainer/match_probe.py) on pairs
of a store's versions and an index's references, sets its thresholds on validation sources, and
writes INDEX/probe/ atomically.

Pairs: for every done image of STORE whose key the index holds, each of its K versions (the
query) with the index's reference of that key; the label is the version's class in STORE's
catalog (identity included). Splits are STORE's, by source (trainer/data.py): training sources
train, validation sources choose the epoch kept and fit the calibration and both thresholds, test
sources are never read.

The probe: the pair's inputs (q, o each W = embedding + FEATURES; match_probe.PAIR_INPUTS: by
default o and log((q+ + f) / (o+ + f)), f a floor per column), standardized with the training
pairs' mean and deviation (buffers), one hidden layer (ReLU, dropout), C logits. TRANSFORM_PROBS
is their softmax; EDITED_SCORE the calibration (trainer/calibration.py, fitted on validation
pairs, grouped by source) of r = log P(not identity) / P(identity) combined with the upload's
distances from its original (trainer/edit_evidence.py; the weights come from an auxiliary probe
trained without every Nth catalog row, so that they answer for edits the probe never saw).

Thresholds, on validation sources only:
  copy_threshold    each validation image's versions in STORE are searched in the index. Copies:
                    the best match's cosine (in the index's copy projection, where it has one:
                    the queries are [embedding, FEATURES], projected by MatchIndex.search). Non-copies, a new photo in no index, simulated leave
                    one out: the same queries' best cosine among indexed images other than their
                    own. The threshold is the lowest (float32) cosine that at most
                    copy_target_fpr of the non-copies reach (an order statistic: on validation
                    the share is within the target).
  edited_threshold  on EDITED_SCORE: the Harrell-Davis (1 - edited_target_fpr) quantile of the
                    validation identity pairs' scores (trainer/detector_card.operating_threshold,
                    the detector's rule).

Baseline, no probe: the nearest stored version. For a query and its matched original, the
original's versions where the index found it (its source store's row, `MatchIndex.location`)
are compared with the query by cosine; the nearest one's class names the edit (by name, so an
index of another catalog still answers for the classes both share), and 1 - cosine(query,
reference) is its edited score. STORE's own versions of the image would hold the query itself.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn

from equiprobe.clients.index_stores import encoder_fields
from equiprobe.clients.store import Store
from equiprobe.services import match_index as mx
from equiprobe.services.files import fsync_path, swap_in

from .calibration import calibration_quality, fit_calibration, raw_log_odds
from .edit_evidence import CombinedLogOdds, Distances, EditEvidence, fit_evidence, input_names
from .match_metrics import auc
from .match_probe import (EDITED_SCORE, FORMAT, IDENTITY, MAX_IDENTICAL_SHARE, OUTPUTS, PAIR_INPUTS, QUERY, REFERENCE,
                          TRANSFORM_PROBS, MatchProbeConfig, MatchProbeError, check_independent, copy_threshold,
                          identical_share, leave_one_out)
from .match_pairs import PairData, split_parts
from .probes import SeedEnsemble, device

PARITY_TOLERANCE = 1e-5  # ONNX Runtime against torch, every output
SEARCH_CHUNK = 4096
TORCH_FILE = "match_probe.pt"  # the torch weights beside the ONNX graph (research, parity checks)
LOG_RATIO_FLOOR = 0.05


def categories_of(classes: list[str], catalog: Optional[str]) -> list[str]:
    """The category of each class: the class itself in a catalog whose classes are categories
    (general), else the transformation's category, looked up in `catalog` first, then the
    others; a user's neural style network is style; an unknown name stays its own category."""
    from equiprobe.services.transforms import CATALOGS

    own = CATALOGS.get(catalog)
    if own is not None and list(own.classes) != own.class_names:
        return list(classes)
    by_name: dict[str, str] = {}
    for name in [n for n in CATALOGS if n != catalog] + ([catalog] if own is not None else []):
        by_name.update({t.name: t.category for t in CATALOGS[name].transforms})  # the store's own catalog last: wins
    general = set(CATALOGS["general"].classes)
    return [by_name.get(c) or (c if c in general else "style" if c.startswith("neural_style_") else c) for c in classes]


# -- the probe ------------------------------------------------------------------------------------

def log_ratio_floor(references: np.ndarray) -> np.ndarray:
    """[W] float32: each column's floor in log((q+ + f) / (o+ + f)), LOG_RATIO_FLOOR x its mean
    magnitude among the training references, so a channel near zero in the original (where a
    ratio is noise) weighs little."""
    return np.maximum(LOG_RATIO_FLOOR * np.abs(references).mean(0), 1e-6).astype(np.float32)


class MatchProbe(nn.Module):
    """(query [B, W], reference [B, W]) -> logits [B, C] of the pair's inputs (match_probe.PAIR_INPUTS:
    q, o, q - o, log ratio), standardized, through one hidden layer."""

    def __init__(self, width: int, classes: int, hidden: int, dropout: float, mean: np.ndarray, std: np.ndarray,
                 inputs: str = "difference", floor: Optional[np.ndarray] = None):
        super().__init__()
        self.inputs, self.width = PAIR_INPUTS[inputs], int(width)
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("std", torch.from_numpy(std))
        if "log_ratio" in self.inputs:
            self.register_buffer("floor", torch.from_numpy(floor if floor is not None else np.ones(width, np.float32)))
        self.head = nn.Sequential(nn.Linear(len(self.inputs) * width, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, classes))

    def pair(self, query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """The unstandardized inputs [B, len(inputs) W]. Edits scale pooled activations more or less
        whatever the photo: the log ratio sees that factor, the difference sees it times the
        photo's own level. Negative values (conv1's pre-activation means) count as 0 in the ratio."""
        def block(name: str) -> torch.Tensor:
            if name == "query":
                return query
            if name == "reference":
                return reference
            if name == "difference":
                return query - reference
            return torch.log((torch.relu(query) + self.floor) / (torch.relu(reference) + self.floor))
        return torch.cat([block(name) for name in self.inputs], dim=1)

    def standardized(self, query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """What the head reads: the pair's inputs, standardized."""
        return (self.pair(query, reference) - self.mean) / self.std

    def forward(self, query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return self.head(self.standardized(query, reference))

    def block_std(self, name: str) -> torch.Tensor:
        at = self.inputs.index(name) * self.width
        return self.std[at:at + self.width]


def distances_module(probe: nn.Module, dim: int) -> Distances:
    """The upload's distances from its original, FEATURES scaled by the training pairs' deviation
    of the references' FEATURES (the probe's own buffer; a SeedEnsemble's first member's, as every
    member has the same)."""
    first = probe.members[0] if isinstance(probe, SeedEnsemble) else probe
    return Distances(dim, first.block_std("reference")[dim:].detach())


class MatchHead(nn.Module):
    """What the ONNX graph is exported from: TRANSFORM_PROBS and EDITED_SCORE (the calibration of
    the probe's log-odds combined with the distances, trainer/edit_evidence.py)."""

    def __init__(self, probe: MatchProbe, calibration, identity: int, evidence: EditEvidence, dim: int):
        super().__init__()
        self.probe = probe
        self.combine = CombinedLogOdds(evidence, identity, distances_module(probe, dim))
        self.calibrate = calibration.module(None)

    def forward(self, query: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.probe(query, reference)
        return torch.softmax(logits, dim=1), self.calibrate(self.combine(logits, query, reference))


@torch.no_grad()
def logits_of(model: nn.Module, data: PairData, part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits [n, C] float32, labels [n], positions [n]) of every pair of a part, image by image
    (pairs in image order, versions within)."""
    model.eval()
    at = next(model.parameters()).device
    out, positions = [], []
    for pos, versions, references in data.chunks(part):
        b, k, w = versions.shape
        q = torch.from_numpy(versions.reshape(b * k, w)).to(at)
        o = torch.from_numpy(np.repeat(references, k, axis=0)).to(at)
        out.append(model(q, o).float().cpu().numpy())
        positions.append(np.repeat(pos, k))
    positions = np.concatenate(positions)
    return np.concatenate(out), np.tile(data.labels, len(data.parts[part].rows)), positions


@torch.no_grad()
def distances_of(distances: Distances, data: PairData, part: str) -> np.ndarray:
    """[n, 1 or 2] distances of every pair of a part, in logits_of's order."""
    out = []
    for _, versions, references in data.chunks(part):
        b, k, w = versions.shape
        out.append(distances(torch.from_numpy(versions.reshape(b * k, w)),
                             torch.from_numpy(np.repeat(references, k, axis=0))).numpy())
    return np.concatenate(out).astype(np.float64)


class CategoryLoss(nn.Module):
    """Cross-entropy of the category: -log of the summed probability of the true class's category's
    classes (logsumexp of their log-probabilities)."""

    def __init__(self, categories: list[str]):
        super().__init__()
        names = list(dict.fromkeys(categories))
        of_class = torch.tensor([names.index(c) for c in categories])
        member = of_class[:, None] == torch.arange(len(names))[None, :]  # [C classes, K categories]
        self.register_buffer("of_class", of_class)
        self.register_buffer("log_member", torch.where(member, 0.0, float("-inf")))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(logits, dim=1)
        category_log_probs = torch.logsumexp(log_probs[:, :, None] + self.log_member[None], dim=1)
        return nn.functional.nll_loss(category_log_probs, self.of_class[labels])


def fit(data: PairData, config: MatchProbeConfig, progress: bool = True, versions: Optional[np.ndarray] = None,
        description: str = "training the match probe (epochs)") -> tuple[MatchProbe, dict]:
    """Adam on shuffled training pairs (of `versions` only, where given), the class's cross-entropy
    plus config.category_weight x the category's, on config.schedule; the epoch of best validation
    accuracy is kept. The standardized inputs of both parts are computed once and shared by every
    fit on `data` (members, the auxiliary probe) where they fit in memory (PairData.prepared);
    otherwise every batch is read and transformed again, to the same result."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    torch.manual_seed(config.seed)
    at = device()
    floor = (log_ratio_floor(data.index.reference(data.parts["train"].ids))
             if "log_ratio" in PAIR_INPUTS[config.pair_inputs] else None)
    unstandardized = MatchProbe(data.width, 1, 1, 0.0, np.zeros(1, np.float32), np.ones(1, np.float32),
                                config.pair_inputs, floor)
    with torch.no_grad():
        mean, std = data.statistics(lambda q, o: unstandardized.pair(torch.from_numpy(q), torch.from_numpy(o)).numpy(),
                                    key=config.pair_inputs)
    model = MatchProbe(data.width, len(data.classes), config.hidden, config.dropout, mean, std, config.pair_inputs,
                       floor)
    with torch.no_grad():  # what model.head reads, on the CPU before the model moves
        train_x, val_x = [data.prepared(part, config.pair_inputs,
                                        lambda q, o: model.standardized(torch.from_numpy(q), torch.from_numpy(o)).numpy())
                          for part in ("train", "val")]
    model.to(at)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = -(-len(data.order("train", None, versions)[0]) // config.batch_size)
    scheduler = (torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.epochs * steps)
                 if config.schedule == "onecycle" else None)
    class_loss = nn.CrossEntropyLoss()
    category_loss = CategoryLoss(categories_of(data.classes, data.store.manifest.get("catalog"))).to(at)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(logits, labels) of each training batch, in data.batches' order either way."""
        seed = config.seed * 100_003 + epoch
        if train_x is None:
            for q, o, y in data.batches("train", config.batch_size, shuffle_seed=seed, versions=versions):
                yield model(torch.from_numpy(q).to(at), torch.from_numpy(o).to(at)), torch.from_numpy(y).to(at)
            return
        positions, chosen = data.order("train", seed, versions)
        for start in range(0, len(positions), config.batch_size):
            pos, ver = positions[start:start + config.batch_size], chosen[start:start + config.batch_size]
            yield model.head(torch.from_numpy(train_x[pos, ver]).to(at)), torch.from_numpy(data.labels[ver]).to(at)

    @torch.no_grad()
    def validation_accuracy() -> float:
        if val_x is None:
            logits, labels, _ = logits_of(model, data, "val")
            return float((logits.argmax(1) == labels).mean())
        model.eval()
        x = val_x.reshape(-1, val_x.shape[2])
        predicted = np.concatenate([model.head(torch.from_numpy(x[i:i + 8192]).to(at)).argmax(1).cpu().numpy()
                                    for i in range(0, len(x), 8192)])
        return float((predicted == np.tile(data.labels, len(val_x))).mean())

    best, best_state, best_epoch, history = -1.0, None, 0, []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task(description, total=config.epochs, status="")
        for epoch in range(config.epochs):
            model.train()
            losses = []
            for logits, labels in batches(epoch):
                optimizer.zero_grad()
                loss = class_loss(logits, labels)
                if config.category_weight:
                    loss = loss + config.category_weight * category_loss(logits, labels)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                losses.append(loss.item())
            accuracy = validation_accuracy()
            history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_accuracy": accuracy})
            if accuracy > best:
                best, best_epoch = accuracy, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            bar.update(task, advance=1, status=f"loss {np.mean(losses):.3f}, validation accuracy {accuracy:.3f} "
                                               f"(best {best:.3f} at {best_epoch})")
            if scheduler is None and epoch - best_epoch >= config.patience:
                break
    model.load_state_dict(best_state)
    return model.eval(), {"epochs_run": len(history), "best_epoch": best_epoch, "history": history}


def fit_members(data: PairData, config: MatchProbeConfig, progress: bool = True) -> tuple[nn.Module, dict]:
    """`config.members` probes, seeds config.seed, config.seed + 1, ...: one MatchProbe, or their
    SeedEnsemble (so the edited score's log-odds r are the average's); the training record is the first member's, with every member's epochs."""
    fitted = [fit(data, replace(config, seed=config.seed + i), progress,
                  description=f"training the match probe, seed {config.seed + i} (epochs)")
              for i in range(config.members)]
    if len(fitted) == 1:
        return fitted[0]
    training = {**fitted[0][1], "members": [{"seed": config.seed + i, "epochs_run": t["epochs_run"],
                                              "best_epoch": t["best_epoch"]} for i, (_, t) in enumerate(fitted)]}
    return SeedEnsemble([m for m, _ in fitted]).eval(), training


# -- the edited score's evidence: the probe's log-odds and the distances ---------------------------

def validation_evidence(model: MatchProbe, data: PairData, logits: np.ndarray) -> np.ndarray:
    """[n, 1 + distances] evidence of every validation pair (trainer/edit_evidence.py), r first."""
    r = raw_log_odds(torch.from_numpy(logits), data.identity)[:, 0].double().numpy()
    return np.concatenate([r[:, None], distances_of(distances_module(model.cpu(), data.dim), data, "val")], 1)


def held_out_versions(data: PairData, every: int) -> np.ndarray:
    """Every `every`-th version of the catalog, identity apart: the rows an auxiliary probe never sees."""
    edits = data.versions[data.labels[data.versions] != data.identity]
    return edits[every - 1::every]


def combine_evidence(data: PairData, config: MatchProbeConfig, evidence: np.ndarray, edited: np.ndarray,
                     groups: np.ndarray, progress: bool = True) -> EditEvidence:
    """How the edited score weighs the probe's log-odds against the distances. Validation pairs of
    the probe itself cannot say: every kind in them was trained on, and there the log-odds alone
    rank best. So an auxiliary probe, trained without every Nth catalog row, answers for edits it
    never saw (the study's generalization protocol); its validation evidence (all rows) chooses and
    fits the weights (edit_evidence.fit_evidence), which are then applied to the probe's own
    log-odds. heldout_every 0: the log-odds alone."""
    held = held_out_versions(data, config.heldout_every) if config.heldout_every else []
    if not len(held):
        return EditEvidence.probe_only(input_names(data.features_dim))
    aux, _ = fit(data, replace(config, epochs=config.auxiliary_epochs or config.epochs), progress,
                 versions=np.setdiff1d(data.versions, held),
                 description=f"auxiliary match probe, {len(held)} rows held out (epochs)")
    aux_logits, _, _ = logits_of(aux, data, "val")
    aux_evidence = validation_evidence(aux, data, aux_logits)
    combination = fit_evidence(aux_evidence, edited, groups, data.features_dim)
    unseen = np.isin(np.tile(data.versions, len(data.parts["val"].rows)), held)
    combined = combination.combine(aux_evidence)
    combination.held_out = {
        "rows": [data.rows_names[v] for v in held],
        "auxiliary_auc_unseen_rows": {"log_odds": auc(aux_evidence[unseen, 0], aux_evidence[~edited, 0]),
                                      "combined": auc(combined[unseen], combined[~edited])}}
    return combination


# -- validation: the nearest stored version, copies ------------------------------------------------

def nearest_stored_version(data: PairData) -> dict:
    """The baseline on validation pairs: [n] predicted class names and categories (None where the
    original's store is gone), whether the original's store has the pair's class at all
    ("shared"), and the edited score 1 - cosine(query, reference)."""
    index, part = data.index, data.parts["val"]
    stores: dict[int, Optional[tuple]] = {}
    names, categories, scores, shared, missing = [], [], [], [], set()
    true_names = np.array(data.classes, object)[data.labels]  # [K]
    for pos, versions, references in data.chunks("val"):
        b, k, _ = versions.shape
        q = mx.unit(versions[:, :, :data.dim])  # [b, K, D]
        scores.append((1.0 - np.einsum("bkd,bd->bk", q, mx.unit(references[:, :data.dim]))).reshape(-1))
        chunk_names = np.full((b, k), None, dtype=object)
        chunk_categories = np.full((b, k), None, dtype=object)
        chunk_shared = np.zeros((b, k), bool)
        ids = part.ids[pos]
        sids, rows = index.store_ids[ids], index.rows[ids]
        for sid in np.unique(sids):
            if sid not in stores:
                entry = index.meta["stores"][int(sid)]
                try:
                    store = Store.open(Path(entry["path"]))
                    m = store.manifest
                    labels = np.asarray(m.get("row_labels") or range(len(m["rows"])))
                    class_names = [m["classes"][j] for j in labels]
                    stores[sid] = (store.array("embeddings"), np.array(class_names, object),
                                   np.array(categories_of(class_names, m.get("catalog")), object))
                except (OSError, ValueError):
                    stores[sid] = None
                    missing.add(entry["path"])
            if stores[sid] is None:
                continue
            embeddings, class_names, class_categories = stores[sid]
            where = np.flatnonzero(sids == sid)
            order = np.argsort(rows[where], kind="stable")
            theirs = np.empty((len(where), embeddings.shape[1], embeddings.shape[2]), np.float32)
            theirs[order] = embeddings[rows[where][order]]
            nearest = np.einsum("bkd,bjd->bkj", q[where], mx.unit(theirs)).argmax(2)  # [g, K]
            chunk_names[where] = class_names[nearest]
            chunk_shared[where] = np.isin(true_names, class_names)[None]
            chunk_categories[where] = class_categories[nearest]
        names.append(chunk_names.reshape(-1))
        categories.append(chunk_categories.reshape(-1))
        shared.append(chunk_shared.reshape(-1))
    return {"names": np.concatenate(names), "categories": np.concatenate(categories),
            "scores": np.concatenate(scores), "shared": np.concatenate(shared), "missing_stores": sorted(missing)}


def copy_figures(data: PairData, config: MatchProbeConfig) -> dict:
    """The copy threshold and what it does on validation: each query a validation image's
    version (at most max_copy_queries, drawn with the seed), searched in the index."""
    part = data.parts["val"]
    n = len(part.rows) * len(data.versions)
    rng = np.random.default_rng(config.seed)
    pick = np.sort(rng.choice(n, min(n, config.max_copy_queries), replace=False))
    positions, versions = pick // len(data.versions), pick % len(data.versions)
    embeddings = data.store.array("embeddings")
    copies, others, valid, matched = [], [], [], []
    for start in range(0, len(pick), SEARCH_CHUNK):
        pos, ver = positions[start:start + SEARCH_CHUNK], versions[start:start + SEARCH_CHUNK]
        rows = part.rows[pos]
        order = np.argsort(rows, kind="stable")
        if data.index.query_width > data.dim:  # a projected index: [embedding, FEATURES], projected in search
            queries = data.queries(rows, ver)
        else:
            queries = np.empty((len(pos), data.dim), np.float32)
            queries[order] = embeddings[rows[order], ver[order]]
        sims, ids, _ = data.index.search(queries, 2)
        owners = part.ids[pos]
        copies.append(sims[:, 0])
        matched.append(ids[:, 0] == owners)
        loo, ok = leave_one_out(sims, ids, owners)
        others.append(loo)
        valid.append(ok)
    copies, matched = np.concatenate(copies), np.concatenate(matched)
    non_copies = np.concatenate(others)[np.concatenate(valid)]
    threshold = copy_threshold(non_copies, config.copy_target_fpr)
    t = np.float32(threshold)
    quantiles = {f"{q:g}": float(np.quantile(non_copies, q)) for q in (0.5, 0.9, 0.99)}
    return {"threshold": threshold, "queries": int(len(copies)), "non_copies": int(len(non_copies)),
            "match@1": float(matched.mean()), "copy_recall": float((copies >= t).mean()),
            "copy_recall_matched": float(((copies >= t) & matched).mean()),
            "non_copy_fpr": float((non_copies >= t).mean()), "non_copy_similarity_quantiles": quantiles,
            "copy_similarity_median": float(np.median(copies)),
            "rule": "lowest float32 cosine that at most copy_target_fpr of the leave-one-out non-copies reach"}


# -- export and writing ---------------------------------------------------------------------------

def export(head: MatchHead, q: np.ndarray, o: np.ndarray, out: Path) -> float:
    """Write the ONNX graph and check it against torch with ONNX Runtime; returns the largest
    difference (raises MatchProbeError above PARITY_TOLERANCE)."""
    import onnx

    from equiprobe.services.runtime import ort_session

    head = head.cpu().eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    # The exporter prints its progress to stdout even with verbose=False; keep CLI output clean
    # (and its note that the two inputs share the one batch axis: they do).
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*")
        torch.onnx.export(head, (torch.from_numpy(q[:2]), torch.from_numpy(o[:2])), str(out),
                          input_names=[QUERY, REFERENCE], output_names=list(OUTPUTS),
                          dynamic_shapes=({0: batch}, {0: batch}), external_data=False, dynamo=True, verbose=False)
        reference = [t.numpy() for t in head(torch.from_numpy(q), torch.from_numpy(o))]
    onnx.checker.check_model(str(out))
    served = ort_session(out).run(list(OUTPUTS), {QUERY: q, REFERENCE: o})
    diff = max(float(np.abs(s.astype(np.float32) - r).max()) if s.shape == r.shape else np.inf
               for s, r in zip(served, reference))
    if not diff <= PARITY_TOLERANCE:
        raise MatchProbeError(f"the exported match probe differs from torch by {diff:.3g} (tolerance "
                              f"{PARITY_TOLERANCE:g}); nothing was written")
    return diff


def load_torch_head(probe_dir: Path) -> MatchHead:
    """The torch module a written probe was exported from (match_probe.pt and match_probe.json)."""
    import json

    from .calibration import Calibration

    record = json.loads((Path(probe_dir) / mx.PROBE_JSON).read_text())
    state = torch.load(Path(probe_dir) / TORCH_FILE, map_location="cpu", weights_only=True)
    width, classes = int(record["width"]), len(record["classes"])
    inputs = record["config"].get("pair_inputs", "difference")  # probes written before the choice existed

    def member() -> MatchProbe:
        size = len(PAIR_INPUTS[inputs]) * width
        return MatchProbe(width, classes, int(record["config"]["hidden"]), float(record["config"]["dropout"]),
                          np.zeros(size, np.float32), np.ones(size, np.float32), inputs)
    members = int(record["config"].get("members", 1))
    probe = member() if members == 1 else SeedEnsemble([member() for _ in range(members)])
    probe.load_state_dict(state)
    features_dim = int(record.get("features_dim") or 0)
    evidence = EditEvidence.from_dict(record.get("edited_evidence"), input_names(features_dim))
    return MatchHead(probe, Calibration.from_dict(record["calibration"]), int(record["identity"]), evidence,
                     width - features_dim).eval()


# -- the whole command ----------------------------------------------------------------------------

def train_match_probe(index_path: Path, store_path: Path, config: MatchProbeConfig = MatchProbeConfig(),
                      progress: bool = True) -> dict:
    """Train, calibrate, threshold, export and write INDEX/probe/; returns match_probe.json's content."""
    import json

    from .detector_card import operating_threshold

    index = mx.MatchIndex.open(index_path)
    store = Store.open(Path(store_path))
    m = store.manifest
    check_independent(index.meta, store.path, m, f"index {index_path}")
    mx.check_compatible(index.meta, encoder_fields(m), f"index {index_path}", f"store {store.path}")
    if index.references is None:
        raise MatchProbeError(f"index {index_path} has no references.npy (built before references existed); rebuild "
                              "it with `equiprobe index build`")
    if IDENTITY not in m["classes"] or IDENTITY not in m["rows"]:
        raise MatchProbeError(f"{store.path} has no '{IDENTITY}' class to tell edited from original")
    parts, counts = split_parts(store, index)
    data = PairData(store, index, parts)
    if index.reference_width != data.width:
        raise MatchProbeError(f"index {index_path}'s references are {index.reference_width} wide, {store.path}'s "
                              f"versions {data.width} (embedding {data.dim} + FEATURES {data.features_dim})")
    identity_version = data.rows_names.index(IDENTITY)
    sample = np.concatenate([parts["train"].rows[:2000], parts["val"].rows[:2000]])
    sample_ids = np.concatenate([parts["train"].ids[:2000], parts["val"].ids[:2000]])
    share = identical_share(data.queries(sample, np.full(len(sample), identity_version)), index.reference(sample_ids))
    if share > MAX_IDENTICAL_SHARE:
        raise MatchProbeError(f"{share:.0%} of {store.path}'s identity versions equal the index's references exactly: "
                              "not independent encodings (stores embedded without --uploads?); a re-uploaded original "
                              "would look edited")

    model, training = fit_members(data, config, progress)
    logits, labels, positions = logits_of(model, data, "val")
    identity = data.identity
    edited = labels != identity
    groups = parts["val"].sources[positions]
    evidence = validation_evidence(model, data, logits)
    combination = combine_evidence(data, config, evidence, edited, groups, progress)
    combined = combination.combine(evidence)
    calibration = fit_calibration(combined, edited, groups)
    head = MatchHead(model, calibration, identity, combination, data.dim).eval()
    with torch.no_grad():
        scores = head.calibrate(torch.from_numpy(combined.astype(np.float32))[:, None])[:, 0].numpy()
    edited_threshold = operating_threshold(scores, edited, config.edited_target_fpr)
    predicted = logits.argmax(1)
    categories = categories_of(data.classes, m.get("catalog"))
    cat = np.array(categories, object)
    probe_figures = {
        "accuracy": float((predicted == labels).mean()), "category_accuracy": float((cat[predicted] == cat[labels]).mean()),
        "edited_auc": auc(scores[edited], scores[~edited]), "identity_pairs_mean_score": float(scores[~edited].mean()),
        "edited_pairs_mean_score": float(scores[edited].mean()),
        "fpr_at_threshold": float((scores[~edited] >= edited_threshold).mean()),
        "tpr_at_threshold": float((scores[edited] >= edited_threshold).mean()),
        "calibration_quality": calibration_quality(scores, edited)}
    base = nearest_stored_version(data)
    answered = np.array([n is not None for n in base["names"]], bool)
    true_names = np.array(data.classes, object)[labels]
    shared = base["shared"]  # pairs whose class the originals' stores have: the baseline can name it
    probe_figures["accuracy_shared_classes"] = float((predicted == labels)[shared].mean()) if shared.any() else None
    baseline = {"method": "nearest stored version (cosine) of the original where the index found it",
                "edited_score": "1 - cosine(query, reference)", "answered": float(answered.mean()),
                "accuracy": float((base["names"][answered] == true_names[answered]).mean()) if answered.any() else None,
                "category_accuracy": (float((base["categories"][answered] == cat[labels][answered]).mean())
                                      if answered.any() else None),
                "accuracy_shared_classes": (float((base["names"][shared] == true_names[shared]).mean())
                                            if shared.any() else None),
                "shared_classes_share": float(shared.mean()),
                "edited_auc": auc(base["scores"][edited], base["scores"][~edited]), "missing_stores": base["missing_stores"]}
    data.release()  # the kept training inputs: every fit is done
    copies = copy_figures(data, config)

    probe_dir = index.path / mx.PROBE_DIR
    staged = index.path / f".{mx.PROBE_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    try:
        _, check_versions, check_references = next(data.chunks("val", 16))
        b, k, w = check_versions.shape
        q_check = check_versions.reshape(b * k, w)
        o_check = np.repeat(check_references, k, axis=0)
        parity = export(head, q_check, o_check, staged / mx.PROBE_ONNX)
        record = {
            "format": FORMAT, "classes": data.classes, "categories": categories, "identity": identity,
            "width": data.width, "features_dim": data.features_dim, "dim": data.dim,
            "inputs": {QUERY: ["FP32", [-1, data.width]], REFERENCE: ["FP32", [-1, data.width]]},
            "outputs": {TRANSFORM_PROBS: ["FP32", [-1, len(data.classes)]], EDITED_SCORE: ["FP32", [-1, 1]]},
            "encoder": index.meta.get("encoder"), "encoder_onnx_sha256": index.meta.get("encoder_onnx_sha256"),
            "catalog": m.get("catalog"), "catalog_version": m.get("catalog_version"),
            "copy_threshold": copies["threshold"], "copy_target_fpr": config.copy_target_fpr,
            "copy_projection": (index.meta.get("projection") or {}).get("sha256"),  # the space it is a cosine in
            "edited_threshold": edited_threshold, "edited_target_fpr": config.edited_target_fpr,
            "calibration": calibration.as_dict(), "edited_evidence": combination.as_dict(),
            "validation": {"pairs": int(len(labels)), "identity_pairs": int((~edited).sum()), **counts,
                           "classes": len(data.classes), "probe": probe_figures, "baseline": baseline,
                           "copy": {k_: v for k_, v in copies.items() if k_ != "threshold"},
                           "edited_threshold_rule": "Harrell-Davis (1 - edited_target_fpr) quantile of the "
                                                    "validation identity pairs' EDITED_SCORE (logit scale)",
                           "identical_references": share},
            "training": {**training, "pairs": data.count("train"), "images": counts["train"]["images"]},
            "config": asdict(config), "parity_max_abs_diff": parity,
            "index": {"path": str(index.path.resolve()), "count": index.count,
                      "index_sha256": index.meta.get("index_sha256"),
                      "stores": [e["path"] for e in index.meta["stores"]]},
            "store": str(Path(store.path).resolve()),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (staged / mx.PROBE_JSON).write_text(json.dumps(record, indent=2, sort_keys=True))
        torch.save(model.state_dict(), staged / TORCH_FILE)
        for name in (mx.PROBE_ONNX, mx.PROBE_JSON, TORCH_FILE):
            fsync_path(staged / name)
        fsync_path(staged)
        swap_in(staged, probe_dir)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return record
