"""Synthetic visual question answering (issue 15): scenes of a few coloured shapes, questions about
count, colour, shape and position, answers of one or two words. Test scenes are never trained on.

Each scene is a 64x64 PNG with 1-4 non-overlapping shapes (circle, square, triangle) in one of
four colours, each kept clear of the image's middle lines so that its quadrant is unambiguous.
Every question asked of a scene has exactly one right answer:

    how many shapes are there?            -> one .. four
    how many red shapes are there?        -> zero .. four
    what colour is the circle?            -> red        (asked only when there is one circle)
    what shape is the blue one?           -> square     (asked only when there is one blue shape)
    where is the green triangle?          -> top left   (asked only when it is unique)

Scenes are drawn with a fixed seed; test scenes are drawn after the training ones from the same
generator, so no test image (nor its layout) was seen in training. Nothing goes into the
repository: the images go under --out (runs/ is ignored by git).

    .venv/bin/python bench/vqa_scenes.py --out runs/vqa
    polyfuse train --train runs/vqa/train.csv --task generation --label answer --image image \\
        --text question --decoder scratch --max-minutes 10 --out runs/vqa/run
    polyfuse evaluate runs/vqa/run --data runs/vqa/test.csv --report
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

SIZE = 64
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
NUMBERS = ("zero", "one", "two", "three", "four")
MARGIN = 3        # a shape's box stays this far from the middle lines and the border


def draw_scene(rng) -> tuple[Image.Image, list[dict]]:
    """1-4 shapes, each fully inside one quadrant, none overlapping."""
    img = Image.new("RGB", (SIZE, SIZE), (245, 245, 240))
    d = ImageDraw.Draw(img)
    objects, boxes = [], []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(50):
            r = int(rng.integers(5, 8))                                   # half side / radius
            qx, qy = int(rng.integers(2)), int(rng.integers(2))           # quadrant
            lo_x, lo_y = qx * SIZE // 2 + MARGIN + r, qy * SIZE // 2 + MARGIN + r
            hi_x, hi_y = (qx + 1) * SIZE // 2 - MARGIN - r, (qy + 1) * SIZE // 2 - MARGIN - r
            cx, cy = int(rng.integers(lo_x, hi_x + 1)), int(rng.integers(lo_y, hi_y + 1))
            box = (cx - r, cy - r, cx + r, cy + r)
            if all(box[2] + 2 < b[0] or b[2] + 2 < box[0] or box[3] + 2 < b[1] or b[3] + 2 < box[1] for b in boxes):
                break
        else:
            continue
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        fill = COLOURS[colour]
        if shape == "circle":
            d.ellipse(box, fill=fill)
        elif shape == "square":
            d.rectangle(box, fill=fill)
        else:
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        boxes.append(box)
        objects.append({"colour": colour, "shape": shape,
                        "where": f"{'top' if qy == 0 else 'bottom'} {'left' if qx == 0 else 'right'}"})
    return img, objects


def questions(objects: list[dict], rng) -> list[tuple[str, str, str]]:
    """(kind, question, answer) for every kind this scene answers unambiguously."""
    out = [("count", "how many shapes are there?", NUMBERS[len(objects)])]
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    out.append(("count_colour", f"how many {colour} shapes are there?",
                NUMBERS[sum(o["colour"] == colour for o in objects)]))
    for kind, key, other in (("colour", "shape", "colour"), ("shape", "colour", "shape")):
        unique = [o for o in objects if sum(p[key] == o[key] for p in objects) == 1]
        if unique:
            o = unique[int(rng.integers(len(unique)))]
            q = f"what colour is the {o['shape']}?" if kind == "colour" else f"what shape is the {o['colour']} one?"
            out.append((kind, q, o[other]))
    unique = [o for o in objects if sum(p["colour"] == o["colour"] and p["shape"] == o["shape"] for p in objects) == 1]
    if unique:
        o = unique[int(rng.integers(len(unique)))]
        out.append(("position", f"where is the {o['colour']} {o['shape']}?", o["where"]))
    return out


def build(out: Path, n_scenes: int, prefix: str, rng) -> pd.DataFrame:
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_scenes):
        img, objects = draw_scene(rng)
        path = out / "images" / f"{prefix}_{i:05d}.png"
        img.save(path)
        for kind, q, a in questions(objects, rng):
            rows.append({"image": str(path.resolve()), "question": q, "answer": a, "kind": kind,
                         "scene": f"{prefix}_{i:05d}"})
    return pd.DataFrame(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/vqa")
    p.add_argument("--train-scenes", type=int, default=2000)
    p.add_argument("--test-scenes", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out, rng = Path(args.out), np.random.default_rng(args.seed)
    train = build(out, args.train_scenes, "train", rng)
    test = build(out, args.test_scenes, "test", rng)
    train.to_csv(out / "train.csv", index=False)
    test.to_csv(out / "test.csv", index=False)
    for name, df in (("train", train), ("test", test)):
        print(f"{name}: {df.scene.nunique()} scenes, {len(df)} questions "
              f"({', '.join(f'{k} {v}' for k, v in df.kind.value_counts().items())})")
    print(f"majority answer per question kind on test: "
          f"{test.groupby('kind').answer.agg(lambda s: s.value_counts().iloc[0] / len(s)).round(2).to_dict()}")


if __name__ == "__main__":
    main()
