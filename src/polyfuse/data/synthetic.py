"""A seeded synthetic table of real files (PNG, WAV) and text, for the demo and the tests.

The label needs two modalities: label = 2 * shape + tone, where
  - the image shows the shape (0 horizontal bar, 1 vertical bar) at a random place, size and colour;
  - the audio is a tone whose pitch carries `tone` (0 low, 1 high), at random length and loudness;
  - the text carries `tone` too, through its adjective (right 90% of the time), among filler words.
So any one modality alone can reach at most about 50%, and image + (audio or text) close to 100%.
Some cells are left empty so that missing modalities are a normal case from the start.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from PIL import Image, ImageDraw

CALM = ["quiet", "calm", "soft", "gentle", "still", "mellow", "hushed", "muted"]
LIVELY = ["loud", "bright", "sharp", "lively", "shrill", "bold", "piercing", "brassy"]
NOUNS = ["morning", "street", "garden", "kitchen", "station", "river", "market", "forest", "office", "harbour"]
FILLER = ["near", "the", "old", "new", "little", "big", "in", "a", "by", "green", "red", "window", "today"]
SAMPLE_RATE = 16000


def make_dataset(folder: str | Path, n: int = 600, seed: int = 0, missing: float = 0.1,
                 modalities=("text", "image", "audio"), image_size: int = 32) -> pd.DataFrame:
    """Write n rows of files under folder and return the table (paths relative to folder)."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        shape, tone = int(rng.integers(2)), int(rng.integers(2))
        row = {"id": i}
        if "text" in modalities:
            row["caption"] = make_text(rng, tone)
        if "image" in modalities:
            path = f"images/{i:05d}.png"
            make_image(rng, shape, image_size).save(folder / path)
            row["image"] = path
        if "audio" in modalities:
            path = f"audio/{i:05d}.wav"
            sf.write(folder / path, make_tone(rng, tone), SAMPLE_RATE, subtype="PCM_16")
            row["audio"] = path
        # Drop a cell now and then, but never the image (it alone carries `shape`) and never all cells.
        for col in ("caption", "audio"):
            others = [c for c in ("caption", "audio") if c != col and c in row and row[c] is not None]
            if col in row and others and rng.random() < missing:
                row[col] = None
        row["label"] = 2 * shape + tone
        row["shape"] = ["horizontal", "vertical"][shape]
        row["score"] = round(2.0 * shape + tone + float(rng.normal(0, 0.1)), 4)   # a regression target
        row["tags"] = "|".join(t for t, on in (("vertical", shape), ("high", tone)) if on) or "none"
        rows.append(row)
    return pd.DataFrame(rows)


def make_text(rng, tone: int) -> str:
    words = LIVELY if (tone == 1) != (rng.random() < 0.1) else CALM
    parts = [str(rng.choice(words)), str(rng.choice(NOUNS))]
    parts += [str(w) for w in rng.choice(FILLER, size=int(rng.integers(1, 5)))]
    rng.shuffle(parts)
    return " ".join(parts)


def make_image(rng, shape: int, size: int = 32) -> Image.Image:
    """A bar, horizontal (shape 0) or vertical (shape 1), at a random place, length and colour."""
    bg = tuple(int(v) for v in rng.integers(150, 256, size=3))
    fg = tuple(int(v) for v in rng.integers(0, 110, size=3))
    img = Image.new("RGB", (size, size), bg)
    long, short = rng.uniform(0.5, 0.8) * size, rng.uniform(0.12, 0.22) * size
    w, h = (long, short) if shape == 0 else (short, long)
    x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
    ImageDraw.Draw(img).rectangle([x0, y0, x0 + w, y0 + h], fill=fg)
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 12, size=(size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def make_tone(rng, tone: int) -> np.ndarray:
    seconds = rng.uniform(0.3, 0.8)
    freq = rng.uniform(220, 420) if tone == 0 else rng.uniform(1100, 2200)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = rng.uniform(0.2, 0.7) * np.sin(2 * np.pi * freq * t) * np.hanning(len(t))
    return (wave + rng.normal(0, 0.02, size=len(t))).astype(np.float32)


def write_splits(folder: str | Path, n: int = 600, seed: int = 0, fractions=(0.7, 0.15, 0.15), **kw) -> dict:
    """make_dataset, then train/val/test CSVs in folder; returns their paths."""
    folder = Path(folder)
    df = make_dataset(folder, n, seed, **kw)
    a, b = int(fractions[0] * n), int((fractions[0] + fractions[1]) * n)
    paths = {}
    for name, part in (("train", df[:a]), ("val", df[a:b]), ("test", df[b:])):
        paths[name] = folder / f"{name}.csv"
        part.to_csv(paths[name], index=False)
    return paths


def write_shards(df: pd.DataFrame, base: str | Path, out: str | Path, per_shard: int,
                 members: dict[str, str], prefix: str = "shard") -> list[Path]:
    """The table's rows as WebDataset tar shards, as img2dataset writes them: row i becomes the
    members {i:06d}.{ext} for each {column: ext} in `members` (a file column's file, a text
    column's value as UTF-8; an empty cell writes no member). Returns the shard paths."""
    import io
    import tarfile
    out, base = Path(out), Path(base)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for s, a in enumerate(range(0, len(df), per_shard)):
        shards.append(out / f"{prefix}-{s:03d}.tar")
        with tarfile.open(shards[-1], "w") as tar:
            for i, row in df.iloc[a:a + per_shard].iterrows():
                for col, ext in members.items():
                    value = row[col]
                    if value is None or (isinstance(value, float) and np.isnan(value)):
                        continue
                    is_file = ext in ("png", "jpg", "wav", "flac")
                    data = (base / value).read_bytes() if is_file else str(value).encode()
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return shards
