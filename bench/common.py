"""Shared parts of the benchmark suite: environment record, result files, tables, timers,
memory probes and the random Google-format checkpoints the encoder benchmarks use.

Every benchmark writes ``bench/results/<name>.json`` holding the machine, the library versions,
the exact command and its figures, and merges its headline figures into
``bench/results/summary.json`` (the key names there are fixed: later checks read them).
Machines are noisy, so benchmarks compare side by side in one process and report medians and
ratios; absolute times are context.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
SCRATCH = os.environ.get("BERT_REC_BENCH_DIR", "/tmp/bert_rec_bench")  # never committed
TINY = os.path.join(ROOT, "checkpoints", "tiny-bert-zh")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Encoder configurations: tiny is the shipped checkpoint; small and base get random weights.
CONFIGS = {
    "tiny": None,
    "small": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12),
}
BASE_VOCAB_SIZE = 21128  # bert-base-chinese


def environment():
    """Machine, library versions and code revision, for every result file."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version()}
    for name in ("numpy", "tensorflow", "tf_keras", "bert4keras", "faiss", "jieba"):
        module = sys.modules.get(name)
        if module is None:
            try:
                from importlib.metadata import version  # noqa: PLC0415
                dist = {"faiss": "faiss-cpu", "tf_keras": "tf-keras",
                        "tensorflow": "tensorflow-cpu"}.get(name, name)
                versions[name] = version(dist)
            except Exception:  # noqa: BLE001  (a missing optional library is not an error)
                versions[name] = None
        else:
            versions[name] = getattr(module, "__version__", None)
    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                  capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        revision = None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(_total_memory_gib(), 1),
            "platform": platform.platform(), "versions": versions, "revision": revision,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _total_memory_gib():
    with open("/proc/meminfo", encoding="utf-8") as f:
        kib = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
    return kib / 2**20


def command():
    """The command line that ran this benchmark, as a user would type it."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return " ".join([".venv/bin/python", script, *sys.argv[1:]])


def write_result(name, figures, summary=None):
    """Write ``bench/results/<name>.json`` and merge ``summary`` into summary.json."""
    from bert_rec.utils.atomic import write_text  # noqa: PLC0415
    os.makedirs(RESULTS, exist_ok=True)
    record = {"benchmark": name, "command": command(), "environment": environment(),
              **figures}
    write_text(os.path.join(RESULTS, f"{name}.json"),
               json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    if summary:
        path = os.path.join(RESULTS, "summary.json")
        merged = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                merged = json.load(f)
        merged.update(summary)
        merged.setdefault("sources", {}).update({key: f"{name}.json" for key in summary})
        write_text(path, json.dumps(merged, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {os.path.relpath(os.path.join(RESULTS, name + '.json'), ROOT)}")


def table(headers, rows):
    """Print a Markdown table."""
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(_cell(v) for v in row) + " |")
    sys.stdout.flush()


def _cell(value):
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def timed(fn, repeats=3, warmup=1):
    """(median seconds, last result) of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


# -- memory --------------------------------------------------------------------------------
def rss_mib():
    """Current resident set size of this process (MiB)."""
    return _status_kib("VmRSS") / 1024


def reset_peak():
    """Reset the kernel's peak-RSS mark of this process (Linux /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def peak_mib():
    """Peak resident set size since the last ``reset_peak`` (MiB)."""
    return _status_kib("VmHWM") / 1024


def _status_kib(field):
    with open("/proc/self/status", encoding="ascii") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))


# -- compute reference --------------------------------------------------------------------
def matmul_flops(n=4096, repeats=5):
    """FLOP/s of a large float32 matmul [n, n] x [n, n] in TensorFlow, in this process."""
    import tensorflow as tf  # noqa: PLC0415
    a = tf.random.normal([n, n], seed=1)
    b = tf.random.normal([n, n], seed=2)
    matmul = tf.function(lambda x, y: tf.matmul(x, y))
    seconds, _ = timed(lambda: matmul(a, b).numpy(), repeats=repeats, warmup=3)
    return 2 * n ** 3 / seconds


def matmul_peak(sizes=(1024, 2048, 4096)):
    """(best FLOP/s, {size: FLOP/s}) of square float32 matmuls: the reference for the encoder's
    FLOP ratio. The best of several sizes, because on some CPUs the 4096² product is memory-bound
    and slower than a 1024² one (a higher reference gives a lower, stricter ratio)."""
    rates = {n: matmul_flops(n) for n in sizes}
    return max(rates.values()), rates


def bert_flops(lengths, layers, hidden, intermediate=None, pooler=False):
    """Multiply-add FLOPs (2 per MAC) of a BERT encoder over sequences of these lengths.

    Per layer and sequence of length L: Q, K, V and output projections 8·L·H², the feed-forward
    4·L·H·I (I = 4H), attention scores and weighted sum 4·L²·H. Embedding lookups, layer norms,
    softmax and biases are not counted (they are not matmul work).
    """
    intermediate = intermediate or 4 * hidden
    total = 0.0
    for length in lengths:
        per_layer = 8 * length * hidden ** 2 + 4 * length * hidden * intermediate \
            + 4 * length ** 2 * hidden
        total += layers * per_layer + (2 * hidden ** 2 if pooler else 0)
    return total


# -- checkpoints ----------------------------------------------------------------------------
def random_checkpoint(name, max_position=128):
    """Directory of a random Google-format checkpoint of configuration ``name`` (made once).

    ``tiny`` is the shipped checkpoint. ``small`` and ``base`` reuse the tiny vocabulary (the
    texts' tokens) padded with ``[unused]`` entries up to bert-base-chinese's 21,128, so the
    embedding table has base's size.
    """
    if CONFIGS[name] is None:
        return TINY
    out = os.path.join(SCRATCH, "checkpoints", name)
    if os.path.exists(os.path.join(out, "bert_config.json")):
        return out
    from bert_rec.checkpoint import create_random_checkpoint  # noqa: PLC0415
    from bert_rec.tokenization import read_vocab  # noqa: PLC0415
    vocab = list(read_vocab(os.path.join(TINY, "vocab.txt")))
    vocab = vocab + [f"[unused{i}]" for i in range(BASE_VOCAB_SIZE - len(vocab))]
    print(f"writing a random {name} checkpoint to {out} ...", file=sys.stderr)
    create_random_checkpoint(out, vocab, seed=0, with_heads=False,
                             max_position_embeddings=max_position, **CONFIGS[name])
    return out
