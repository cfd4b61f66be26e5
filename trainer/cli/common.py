"""What every command module shares: `fail`, and the options that set a config dataclass.

Light on purpose (typer, rich, the stdlib and trainer.configs): the command modules import this
at top level, and `equiprobe embed` / `score` / `store` must run where torch is not installed.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Any, Callable, Optional

import typer
from rich.console import Console

from equiprobe.trainer.configs import BaselineConfig, ProbeConfig

console = Console(stderr=True)


def fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


PROBE_HELP = {
    "kind": "linear or mlp.",
    "hidden": "mlp: width of the hidden layer.",
    "dropout": "mlp: dropout after the hidden layer.",
    "weight_decay": "Adam weight decay.",
    "max_epochs": "Upper bound; early stopping on validation usually ends sooner.",
    "patience": "Epochs without a better validation accuracy before stopping early.",
    "features": "Also read the store's FEATURES (pooled statistics of the encoder's early blocks) beside its "
                "embeddings; deploy then feeds the served FEATURES to the probe.",
    "ensemble": "Save every seed's probe as one model averaging their class probabilities (deployed whole), "
                "instead of the seed of best validation accuracy.",
    "stop_on": "What early stopping and the choice of seed watch on validation: accuracy, or auc (edited "
               "versions vs originals, by -log P(identity); tasks with an identity class, such as detect).",
}
BASELINE_HELP = {
    "c_grid": "logreg: the values of C tried (the best on validation is kept). Repeatable.",
    "k_grid": "knn: the values of k tried (the best on validation is kept). Repeatable.",
    "max_examples": "logreg/knn: training (and validation) examples held in memory; a fixed-seed subsample "
                    "above this.",
    "max_iter": "logreg: lbfgs iterations.",
    "seed": "logreg/knn: seed of the subsample, where a part has more than --max-examples.",
    "batch_size": "logreg/knn: examples per read (and per faiss search).",
}
# Baseline fields whose plain names are the probe's (or a command's) own options.
BASELINE_RENAMES = {"seed": "baseline_seed", "batch_size": "baseline_batch_size"}


def config_options(cls: type, into: str, *, skip: tuple[str, ...] = (), rename: Optional[dict[str, str]] = None,
                   helps: Optional[dict[str, str]] = None, unset: Optional[str] = None,
                   bounds: Optional[dict[str, dict[str, Any]]] = None, negatable: tuple[str, ...] = ()) -> Callable:
    """A decorator that gives a command one option per field of the dataclass `cls` (`--field-name`,
    or `--NAME` for `rename={field: NAME}`), leaving out `skip`, and hands the values to the
    command as one dict, its parameter `into` (field name -> value). `bounds={field: {"min": 1}}`
    passes typer.Option's range checks (min, max) for a field; a bool field in `negatable` is
    `--field-name/--no-field-name`.

    Each option's default is the field's default, read from the dataclass; a tuple field becomes
    a repeatable option (several values). With `unset` (a phrase for the help, such as "the
    demo's"), options default to nothing and the dict holds only the fields given: the command
    applies them to its own configuration."""
    rename, helps, bounds = rename or {}, helps or {}, bounds or {}
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    tuples = {f.name for f in fields if typing.get_origin(hints[f.name]) is tuple}

    def option(field: dataclasses.Field) -> inspect.Parameter:
        annotation = hints[field.name]
        default = field.default
        if field.name in tuples:
            annotation, default = list[typing.get_args(annotation)[0]], list(default)
        help_text = helps.get(field.name)
        if unset:
            annotation, default = Optional[annotation], None
            help_text = f"{help_text or ''} Default: {unset}.".strip()
        flag = "--" + rename.get(field.name, field.name).replace("_", "-")
        if field.name in negatable:
            flag = f"{flag}/--no-{flag[2:]}"
        return inspect.Parameter(f"{into}__{field.name}", inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                 default=typer.Option(default, flag, help=help_text, **bounds.get(field.name, {})))

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != into]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given = {f.name: kwargs.pop(f"{into}__{f.name}") for f in fields}
            values = {name: tuple(v) if name in tuples and v is not None else v for name, v in given.items()
                      if not (unset and v is None)}
            return command(**kwargs, **{into: values})

        wrapper.__signature__ = signature.replace(parameters=own + [option(f) for f in fields])  # type: ignore
        return wrapper

    return decorate


def probe_options(*, skip: tuple[str, ...] = ("kind",), helps: Optional[dict[str, str]] = None,
                  rename: Optional[dict[str, str]] = None, unset: Optional[str] = None) -> Callable:
    """Options for the fields of trainer.probes.ProbeConfig, passed as `probe_fields`."""
    return config_options(ProbeConfig, "probe_fields", skip=skip, rename=rename, helps={**PROBE_HELP, **(helps or {})},
                          unset=unset)


def baseline_options(*, skip: tuple[str, ...] = ("kind",), helps: Optional[dict[str, str]] = None) -> Callable:
    """Options for the fields of trainer.baselines.BaselineConfig, passed as `baseline_fields`
    (seed and batch_size as --baseline-seed and --baseline-batch-size)."""
    return config_options(BaselineConfig, "baseline_fields", skip=skip, rename=BASELINE_RENAMES,
                          helps={**BASELINE_HELP, **(helps or {})})


def answer_files(files, ask: Callable[[bytes], dict], as_json: bool, show: Callable[[Console, Any, dict], None],
                 errors: tuple = ()) -> None:
    """Send each file to the server (`ask`: file bytes -> a JSON-able dict) and print one JSON object
    a line or `show`'s line; a file that cannot be read or is refused gets its own error and the
    others are still answered; exit status 1 if any failed."""
    import json

    console, failed = Console(width=140), 0
    for path in files:
        try:
            result = ask(path.read_bytes())
        except (OSError, *errors) as exc:  # one bad file does not stop the others
            failed += 1
            result = {"error": exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)}
        if as_json:
            print(json.dumps({"file": str(path), **result}), flush=True)
        elif "error" in result:
            console.print(f"[red]{path}: {result['error']}[/red]", highlight=False)
        else:
            show(console, path, result)
    if failed:
        raise typer.Exit(1)
