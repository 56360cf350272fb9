"""Simple baselines on the same train/test split as a Polyfuse run, printed as one markdown table.

  logreg early fusion, logreg image/audio/text   LogisticRegression on standardised raw features
      (small flattened pixels, time-pooled log-mel, TF-IDF); C picked on a grouped 20% of training rows
  CNN image, CNN audio          a small 3-block CNN per image or audio column (text is skipped)
  late fusion (sum log-prob), late fusion (mean prob)   the per-column CNNs' test predictions combined
  polyfuse                      with --polyfuse "ARGS": `polyfuse train` + `polyfuse evaluate`, plus
                                its modality-ablation rows (polyfuse without image, ...)

Inputs are decoded with Pillow and soundfile, not Polyfuse's processors; image side and clip length are
read from the training table. Media paths are relative to each CSV's folder, or --base-dir.
Classification only. Each row's seconds are fitting plus prediction (decoding, shared, is printed
apart); late fusion's are its CNNs' sum; Polyfuse's are train plus evaluate. --threads defaults to 1.

    D=../shared/datasets/avdigits; A="--label label --image image --audio audio"   # from the repository root
    python bench/baselines.py --train $D/train.csv --test $D/test.csv $A
    python bench/baselines.py --train $D/train.csv --test $D/test.csv $A --max-rows 400 --max-test-rows 300 \\
        --epochs 1                                                           # a quick smoke run
    python bench/baselines.py --train $D/train.csv --test $D/test.csv $A --json runs/baselines/avdigits.json \\
        --polyfuse "--config configs/avdigits.yaml --fusion late --quiet"   # one flag alone: --polyfuse=--quiet

Leave-one-speaker-out on avdigits: --hold-out COL=VALUE drops the rows with that value from the
training table and keeps only those in the test table (--test $D/train.csv instead tests on the
speaker's 45 training takes per digit rather than the 5 test takes):

    for s in george jackson lucas nicolas theo yweweler; do
      python bench/baselines.py --train $D/train.csv --test $D/test.csv $A --hold-out speaker=$s \\
          --out runs/baselines/loso-$s --json runs/baselines/loso-$s.json
    done
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep instead of spinning

import argparse
import json
import math
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import soundfile as sf
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupShuffleSplit, train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

POLYFUSE = [sys.executable, "-m", "polyfuse.cli"]
LOG_FLOOR = 1e-10        # log-mel power floor
MAX_AUDIO_DIM = 4000     # logreg audio features: log-mel pooled in time to at most this many values


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="training table (.csv)")
    p.add_argument("--test", required=True, help="test table (.csv)")
    p.add_argument("--label", required=True, help="label column (classification only)")
    for m in ("image", "audio", "text"):
        p.add_argument(f"--{m}", action="append", default=[], metavar="COL", help=f"{m} column (repeatable)")
    p.add_argument("--base-dir", help="folder relative media paths resolve against (default: each CSV's folder)")
    p.add_argument("--max-rows", type=int, help="stratified subset of the training table")
    p.add_argument("--max-test-rows", type=int, help="stratified subset of the test table")
    p.add_argument("--hold-out", metavar="COL=VALUE", help="train without rows where COL==VALUE, test only on them")
    p.add_argument("--epochs", type=int, default=15, help="CNN epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    p.add_argument("--polyfuse", metavar="ARGS", help="also run Polyfuse, with these extra `polyfuse train` flags")
    p.add_argument("--out", help="subset tables and the Polyfuse run (default: runs/baselines/<data folder>)")
    p.add_argument("--json", help="write every number here")
    a = p.parse_args(argv)
    if not (a.image or a.audio or a.text):
        p.error("give at least one --image, --audio or --text column")
    return a


def die(msg: str):
    sys.exit(f"baselines.py: {msg}")


def read_table(path: str, base_dir: str | None, cols: list[str], media: list[str], label: str) -> pd.DataFrame:
    df = pd.read_csv(path)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        die(f"{path} has no column(s) {missing}; it has {list(df.columns)}")
    base = Path(base_dir) if base_dir else Path(path).resolve().parent
    for c in media:   # absolute paths, so the tables written to --out still point at the files
        df[c] = [str((base / v).resolve()) if isinstance(v, str) and v else None for v in df[c]]
    if df[label].isna().any():
        print(f"{path}: dropped {int(df[label].isna().sum())} row(s) without a label")
    return df[df[label].notna()].reset_index(drop=True)


def check_classification(y: pd.Series, label: str):
    if pd.api.types.is_float_dtype(y) and not np.allclose(y, np.round(y)):
        die(f"label column '{label}' holds non-integer numbers; baselines.py does classification only")
    k = y.nunique()
    if k < 2:
        die(f"label column '{label}' has {k} distinct value(s) in training; need at least 2 classes")
    if k > max(50, len(y) // 2):
        die(f"label column '{label}' has {k} distinct values over {len(y)} rows: it looks like an id or a "
            "regression target; baselines.py does classification only")


def subset(df: pd.DataFrame, label: str, n: int | None, seed: int) -> pd.DataFrame:
    """A stratified subset of n rows (a plain random one if some class is too small to stratify)."""
    if not n or n >= len(df):
        return df
    counts = df[label].value_counts()
    strat = df[label] if counts.min() >= 2 and n >= len(counts) else None
    keep, _ = train_test_split(df.index.to_numpy(), train_size=n, stratify=strat, random_state=seed)
    return df.loc[np.sort(keep)].reset_index(drop=True)


def image_settings(paths: list[str], seed: int) -> tuple[str, int]:
    """('L' if every sampled image is single-channel else 'RGB', median short side) over <= 200 images."""
    paths = [p for p in paths if p]
    single, sides = True, []
    for p in np.random.default_rng(seed).choice(paths, size=min(200, len(paths)), replace=False):
        with Image.open(p) as im:
            sides.append(min(im.size))
            single &= im.mode in ("1", "L", "LA", "I", "I;16", "F")     # palette images count as colour
    return ("L" if single else "RGB"), int(np.median(sides))


def decode_images(paths: list[str], mode: str, sides: tuple[int, ...]) -> list[np.ndarray]:
    """For each side s, an (N, C, s, s) uint8 array: short side resized to s, centre-cropped."""
    cache, ch = {}, 1 if mode == "L" else 3
    for p in set(paths) - {None}:
        with Image.open(p) as im:
            im = im.convert("RGBA").convert(mode) if im.mode in ("P", "PA") else im.convert(mode)
            cache[p] = [np.asarray(ImageOps.fit(im, (s, s), Image.BILINEAR)).reshape(s, s, ch) for s in sides]
    out = []
    for i, s in enumerate(sides):
        blank = np.zeros((s, s, ch), np.uint8)
        out.append(np.stack([cache[p][i] if p else blank for p in paths]).transpose(0, 3, 1, 2).copy())
    return out


def resample(x: np.ndarray, sr: int, target: int) -> np.ndarray:
    """FFT resampling (zero-padding or truncating the spectrum)."""
    if sr == target or len(x) < 2:
        return x
    n = max(1, int(round(len(x) * target / sr)))
    X, Y = np.fft.rfft(x), np.zeros(n // 2 + 1, complex)
    Y[:min(len(X), len(Y))] = X[:len(Y)]
    return (np.fft.irfft(Y, n) * (n / len(x))).astype(np.float32)


def mel_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """(n_mels, n_fft//2+1) triangular filters, evenly spaced on the HTK mel scale from 0 to sr/2."""
    mel = lambda f: 2595 * np.log10(1 + f / 700)
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)
    edges = hz(np.linspace(0, mel(sr / 2), n_mels + 2))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.maximum(0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid))).astype(np.float32)


def log_mel(x: np.ndarray, sr: int, fb: np.ndarray) -> np.ndarray:
    """(n_mels, frames) log-mel power: 25 ms Hann window in an n_fft of a power of two, 10 ms hop."""
    win, hop, n_fft = round(0.025 * sr), round(0.010 * sr), (fb.shape[1] - 1) * 2
    window = np.zeros(n_fft, np.float32)
    window[(n_fft - win) // 2:(n_fft - win) // 2 + win] = np.hanning(win)
    x = np.pad(x, n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * window
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return np.log(np.maximum(fb @ power.T, LOG_FLOOR)).astype(np.float32)


def decode_audio(train_paths: list, test_paths: list) -> tuple[dict, dict]:
    """{path: (n_mels, frames) log-mel} for every file, and the settings read from the training table."""
    raw = {}
    for p in set(train_paths + test_paths) - {None}:
        x, sr = sf.read(p, dtype="float32", always_2d=True)
        raw[p] = (x.mean(axis=1), sr)
    used = [p for p in train_paths if p]
    sr = Counter(raw[p][1] for p in used).most_common(1)[0][0]
    clip_s = min(10.0, float(np.percentile([len(raw[p][0]) / raw[p][1] for p in used], 95)))
    n_mels, n_fft = (40 if sr <= 8000 else 64), 2 ** math.ceil(math.log2(0.025 * sr))
    fb = mel_filters(sr, n_fft, n_mels)
    mels = {p: log_mel(resample(x, s, sr), sr, fb) for p, (x, s) in raw.items()}
    frames = max(8, 1 + int(clip_s * sr) // round(0.010 * sr))
    return mels, {"sample_rate": sr, "clip_s": round(clip_s, 3), "n_fft": n_fft, "n_mels": n_mels, "frames": frames}


def fit_frames(m: np.ndarray, frames: int, pad: np.ndarray, offset: int | None = None) -> np.ndarray:
    """Crop or pad (with `pad`) to `frames`; offset None: centre crop / start at 0, else that shift."""
    n = m.shape[1]
    if n >= frames:
        o = (n - frames) // 2 if offset is None else min(offset, n - frames)
        return m[:, o:o + frames]
    out = np.repeat(pad[:, None], frames, axis=1)
    o = 0 if offset is None else min(offset, frames - n)
    out[:, o:o + n] = m
    return out


def fit_logreg(tr_blocks, te_blocks, y, groups, seed) -> tuple[np.ndarray, float]:
    """Test predictions and the C picked on a grouped 20% validation split of the training rows."""
    sparse = any(sp.issparse(b) for b in tr_blocks)
    cat = (lambda bs: sp.hstack(bs).tocsr()) if sparse else (lambda bs: np.hstack(bs))
    Xtr, Xte = cat(tr_blocks), cat(te_blocks)
    fit = lambda X, yy, C: LogisticRegression(C=C, max_iter=300).fit(X, yy)
    best = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if len(y) >= 50:
            tr, va = next(GroupShuffleSplit(1, test_size=0.2, random_state=seed).split(Xtr, y, groups))
            scores = {C: fit(Xtr[tr], y[tr], C).score(Xtr[va], y[va]) for C in (0.1, 1.0, 10.0, 100.0)}
            best = max(scores, key=scores.get)
        return fit(Xtr, y, best).predict(Xte), best


def dense_block(tr: np.ndarray, te: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardised, then scaled by 1/sqrt(dim) so every block has about unit norm, like a TF-IDF row."""
    sc, k = StandardScaler().fit(tr), 1 / math.sqrt(tr.shape[1])
    return sc.transform(tr) * k, sc.transform(te) * k


def make_cnn(in_ch: int, k: int) -> nn.Module:
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    return nn.Sequential(*block(in_ch, 32), *block(32, 64), *block(64, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, k))


def random_resized_crop(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per image: a crop of 80-100% of the area, aspect 3/4-4/3, resized back to the input size."""
    b = x.shape[0]
    area = torch.empty(b).uniform_(0.8, 1.0, generator=g)
    ratio = torch.exp(torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g))
    w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    tx, ty = (torch.rand(2, b, generator=g) * 2 - 1) * torch.stack([1 - w, 1 - h])
    zero = torch.zeros(b)
    theta = torch.stack([torch.stack([w, zero, tx], 1), torch.stack([zero, h, ty], 1)], 1)   # (b, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def spec_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Two frequency and two time masks per example, each up to 1/8 of the axis, set to the mean (0)."""
    b, _, n_mels, frames = x.shape
    for size, shape in ((n_mels, (b, 1, -1, 1)), (frames, (b, 1, 1, -1))):
        for _ in range(2):
            w = torch.randint(0, max(1, size // 8) + 1, (b,), generator=g)
            s = (torch.rand(b, generator=g) * (size - w + 1)).long()
            ar = torch.arange(size)[None]
            x = x.masked_fill(((ar >= s[:, None]) & (ar < (s + w)[:, None])).view(shape), 0.0)
    return x


def train_cnn(in_ch, batch_fn, k, n_train, y, n_test, args) -> np.ndarray:
    """Fit on batch_fn(idx, True, g) training batches; (n_test, k) log-probabilities on the test rows."""
    torch.manual_seed(args.seed)
    g, rng = torch.Generator().manual_seed(args.seed), np.random.default_rng(args.seed)
    net, bs = make_cnn(in_ch, k), 64
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, args.epochs * math.ceil(n_train / bs)))
    yt = torch.tensor(y)
    for _ in range(args.epochs):
        net.train()
        perm = rng.permutation(n_train)
        for i in range(0, n_train, bs):
            idx = perm[i:i + bs]
            if len(idx) < 2:      # BatchNorm needs two examples
                continue
            loss = F.cross_entropy(net(batch_fn(idx, True, g)), yt[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    for m in net.modules():    # BatchNorm statistics of the final weights (short runs: far from the EMA)
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for i in range(0, n_train, 256):
            net(batch_fn(np.arange(i, min(i + 256, n_train)), True, g))
    net.eval()
    with torch.no_grad():
        return torch.cat([F.log_softmax(net(batch_fn(np.arange(i, min(i + 256, n_test)), False, g)), 1)
                          for i in range(0, n_test, 256)]).numpy()


def run_polyfuse(args, out: Path, train_csv: Path, test_csv: Path) -> list[dict]:
    run, eval_json = out / "polyfuse", out / "polyfuse_eval.json"
    if run.exists():
        if not ((run / "log.jsonl").exists() or (run / "checkpoint").exists()):
            die(f"{run} exists and is not a Polyfuse run; remove it or choose another --out")
        shutil.rmtree(run)    # a fresh run: train refuses a folder that holds one
    cols = [x for m in ("image", "audio", "text") for c in getattr(args, m) for x in (f"--{m}", c)]
    train = POLYFUSE + ["train", "--train", str(train_csv), "--label", args.label, *cols, "--out", str(run),
                        *shlex.split(args.polyfuse)]
    help_text = subprocess.run(POLYFUSE + ["evaluate", "--help"], capture_output=True, text=True).stdout
    flag = "--json" if "--json" in help_text else "--out"    # --out takes a .json file too
    evaluate = POLYFUSE + ["evaluate", str(run), "--data", str(test_csv), flag, str(eval_json)]
    t0 = time.perf_counter()
    for cmd in (train, evaluate):
        print("$ polyfuse " + " ".join(shlex.quote(c) for c in cmd[len(POLYFUSE):]), flush=True)
        rc = subprocess.run(cmd).returncode
        if rc:
            print(f"polyfuse {cmd[len(POLYFUSE)]} failed (exit {rc}); no Polyfuse row", file=sys.stderr)
            return [{"name": f"polyfuse ({cmd[len(POLYFUSE)]} failed, exit {rc})", "accuracy": None, "seconds": None}]
    m = json.loads(eval_json.read_text())
    rows = [{"name": "polyfuse", "accuracy": m["accuracy"], "seconds": time.perf_counter() - t0}]
    rows += [{"name": "polyfuse " + key.replace("_", " "), "accuracy": v["accuracy"], "seconds": None}
             for key, v in m.get("modality_ablation", {}).items() if "accuracy" in v]
    return rows


def load_split(args) -> tuple[pd.DataFrame, pd.DataFrame]:
    cols, media = args.image + args.audio + args.text + [args.label], args.image + args.audio
    train, test = (read_table(t, args.base_dir, cols, media, args.label) for t in (args.train, args.test))
    if args.hold_out:
        col, _, value = args.hold_out.partition("=")
        if col not in train.columns or col not in test.columns:
            die(f"--hold-out: column '{col}' is not in both tables")
        train, test = train[train[col].astype(str) != value], test[test[col].astype(str) == value]
        if train.empty or test.empty:
            die(f"--hold-out {args.hold_out}: leaves {len(train)} training and {len(test)} test rows")
    check_classification(train[args.label], args.label)
    return (subset(train.reset_index(drop=True), args.label, args.max_rows, args.seed),
            subset(test.reset_index(drop=True), args.label, args.max_test_rows, args.seed))


def image_column(tr_paths, te_paths, seed):
    """Settings, the (train, test) logreg block and (channels, batch function) for the CNN."""
    mode, side = image_settings(tr_paths, seed)
    lr_side, cnn_side = min(side, 32), int(np.clip(side, 32, 48))
    (tr_lr, tr_cnn), (te_lr, te_cnn) = (decode_images(p, mode, (lr_side, cnn_side)) for p in (tr_paths, te_paths))
    block = dense_block(tr_lr.reshape(len(tr_lr), -1) / 255.0, te_lr.reshape(len(te_lr), -1) / 255.0)
    mu = tr_cnn.mean(axis=(0, 2, 3), keepdims=True, dtype=np.float32) / 255
    sd = tr_cnn.std(axis=(0, 2, 3), keepdims=True, dtype=np.float32) / 255 + 1e-6
    norm = [torch.as_tensor((a.astype(np.float32) / 255 - mu) / sd) for a in (tr_cnn, te_cnn)]

    def batch(idx, training, g):
        return random_resized_crop(norm[0][idx], g) if training else norm[1][idx]
    info = {"mode": mode, "median_side": side, "logreg_side": lr_side, "cnn_side": cnn_side}
    return info, block, (tr_cnn.shape[1], batch)


def audio_column(tr_paths, te_paths):
    """Settings, the (train, test) logreg block and (channels, batch function) for the CNN."""
    mels, s = decode_audio(tr_paths, te_paths)
    used = np.concatenate([mels[p] for p in set(tr_paths) - {None}], axis=1)
    mu, sd = used.mean(axis=1, keepdims=True), used.std(axis=1, keepdims=True) + 1e-6
    pad = np.zeros(s["n_mels"], np.float32)    # zero-padded in the standardised space: the training mean
    norm = {p: (m - mu) / sd for p, m in mels.items()}
    rows = [[norm[p] if p else pad[:, None] for p in paths] for paths in (tr_paths, te_paths)]
    f, pool = s["frames"], math.ceil(s["n_mels"] * s["frames"] / MAX_AUDIO_DIM)
    s["logreg_time_pool"] = pool

    def flat(ms):
        x = np.stack([fit_frames(m, f, pad)[:, :f // pool * pool] for m in ms])
        return x.reshape(len(ms), s["n_mels"], f // pool, pool).mean(axis=3).reshape(len(ms), -1)

    def batch(idx, training, g):
        if not training:
            return torch.as_tensor(np.stack([fit_frames(rows[1][i], f, pad) for i in idx])[:, None])
        shift = [int(torch.randint(0, abs(rows[0][i].shape[1] - f) + 1, (1,), generator=g)) for i in idx]
        x = np.stack([fit_frames(rows[0][i], f, pad, o) for i, o in zip(idx, shift)])[:, None]
        return spec_augment(torch.as_tensor(x), g)
    return s, dense_block(flat(rows[0]), flat(rows[1])), (1, batch)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        run_all(args)


def run_all(args):
    train, test = load_split(args)
    out = Path(args.out or Path("runs") / "baselines" / Path(args.train).resolve().parent.name)
    out.mkdir(parents=True, exist_ok=True)
    train_csv, test_csv = out / "train.csv", out / "test.csv"
    train.to_csv(train_csv, index=False)
    test.to_csv(test_csv, index=False)
    classes = sorted(train[args.label].unique().tolist())
    index = {c: i for i, c in enumerate(classes)}
    y = train[args.label].map(index).to_numpy()
    y_test = np.array([index.get(v, -1) for v in test[args.label]])    # unseen labels count as wrong
    k, n, nt = len(classes), len(train), len(test)
    first = (args.audio or args.image or [None])[0]
    groups = train[first].fillna("").to_numpy() if first else np.arange(n)  # rows sharing a file stay together
    print(f"rows: train {n}, test {nt}; {k} classes; seed {args.seed}; threads {args.threads}")

    t0, info, blocks, cnns = time.perf_counter(), {}, {}, {}   # per column: settings, logreg block, CNN input
    paths = lambda df, c: [p if isinstance(p, str) else None for p in df[c]]   # None: an empty cell
    for c in args.image:
        info[c], blocks[c], cnns[c] = image_column(paths(train, c), paths(test, c), args.seed)
    for c in args.audio:
        info[c], blocks[c], cnns[c] = audio_column(paths(train, c), paths(test, c))
    for c in args.text:
        vec = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), max_features=20000, min_df=2 if n >= 50 else 1)
        texts = [df[c].fillna("").astype(str) for df in (train, test)]
        blocks[c] = (vec.fit_transform(texts[0]), vec.transform(texts[1]))
        info[c] = {"tfidf_features": blocks[c][0].shape[1]}
    decode_s = time.perf_counter() - t0
    print(f"decoding and features: {decode_s:.1f} s; " + json.dumps(info))

    results = []

    def record(name, pred, seconds, **extra):
        results.append({"name": name, "accuracy": float(np.mean(pred == y_test)), "seconds": seconds, **extra})
        print(f"  {name}: {results[-1]['accuracy']:.3f} ({seconds:.1f} s)", flush=True)

    by_mod = {m: getattr(args, m) for m in ("image", "audio", "text") if getattr(args, m)}
    fits = [("logreg early fusion", sum(by_mod.values(), []))] if len(by_mod) > 1 else []
    for name, cols in fits + [(f"logreg {m}", cs) for m, cs in by_mod.items()]:
        t = time.perf_counter()
        pred, C = fit_logreg([blocks[c][0] for c in cols], [blocks[c][1] for c in cols], y, groups, args.seed)
        record(name, pred, time.perf_counter() - t, C=C)
    logps = {}
    for m in ("image", "audio"):
        for c in getattr(args, m):
            name, t = (f"CNN {m}" if len(getattr(args, m)) == 1 else f"CNN {m}:{c}"), time.perf_counter()
            logps[name] = train_cnn(*cnns[c], k, n, y, nt, args)
            record(name, logps[name].argmax(1), time.perf_counter() - t)
    if len(logps) > 1:
        lp, cnn_s = np.stack(list(logps.values())), sum(r["seconds"] for r in results if r["name"] in logps)
        record("late fusion (sum log-prob)", lp.sum(0).argmax(1), cnn_s)
        record("late fusion (mean prob)", np.exp(lp).mean(0).argmax(1), cnn_s)
    if args.polyfuse is not None:
        results += run_polyfuse(args, out, train_csv.resolve(), test_csv.resolve())

    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    print(f"\n{n} training rows, {nt} test rows, {k} classes; CNN epochs {args.epochs}\n")
    print("| baseline | test accuracy | wall s |\n|---|---:|---:|")
    for r in results:
        print(f"| {r['name']} | {fmt(r['accuracy'])} | {fmt(r['seconds'])} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "train": str(args.train), "test": str(args.test), "label": args.label, "hold_out": args.hold_out,
            "train_rows": n, "test_rows": nt, "classes": [str(c) for c in classes], "epochs": args.epochs,
            "seed": args.seed, "decode_seconds": decode_s, "features": info, "tables": str(out),
            "results": results}, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
