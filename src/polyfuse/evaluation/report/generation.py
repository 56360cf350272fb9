"""report.html for a generation run: the scores, the training curves, and rows side by side (what
the model read, with a player for audio; the references; what it wrote), the best and the worst."""
from __future__ import annotations

import base64
import datetime
from html import escape
from pathlib import Path

import numpy as np

from ...data.manifest import is_missing
from ...generation.metrics import row_scores
from . import sections
from .page import inputs_of, page, read_log

N_ROWS = 6                                # best and worst rows shown
AUDIO_MIME = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}
MAX_EMBEDDED_AUDIO = 2_000_000            # bytes; a longer recording gets its spectrogram only


def write_generation_report(path: Path, gen, run_dir: Path, table, data, generated: list[str],
                            references: list[list[str]], result: dict) -> Path:
    """gen: generation.run.Generator; data: the encoded rows of table that were scored, in order."""
    scores = np.array(row_scores(generated, references))
    order = np.argsort(-scores, kind="stable")
    best = [int(i) for i in order[:N_ROWS]]
    worst = [int(i) for i in order[::-1][:N_ROWS] if int(i) not in best]
    parts = [sections.section("headline", "Headline", sections.headline(result, "generation"),
                              "CIDEr-D, BLEU-4 and ROUGE-L as the COCO caption code scores them; WER and CER "
                              "against each row's first reference; exact match against any."),
             sections.training_curves(read_log(run_dir)),
             rows_section("best", "Best rows", best, gen, table, data, generated, references, scores),
             rows_section("worst", "Worst rows", worst, gen, table, data, generated, references, scores)]
    cfg = gen.cfg
    sub = (f"{escape(str(result.get('data', '')))} · {result['n']:,} rows · generation · "
           f"{cfg.model.fusion} fusion into {escape(str(cfg.generate.decoder))} · "
           f"{datetime.datetime.now():%Y-%m-%d %H:%M}")
    nav = [("headline", "Headline"), ("training", "Training"), ("best", "Best rows"), ("worst", "Worst rows")]
    path.write_text(page(run_dir, sub, parts, nav), encoding="utf-8")
    return path


def rows_section(id_: str, title: str, rows: list[int], gen, table, data, generated, references, scores) -> str:
    if not rows:
        return ""
    cards = []
    for i in rows:
        shown = inputs_of(gen.cfg, table, data, i)
        media = "".join(f'<img class="thumb" src="{u}" alt="image">' for u in shown["images"])
        media += "".join(f'<img class="spec" src="{u}" alt="spectrogram">' for u in shown["audio"])
        media += "".join(audio_players(gen.cfg, table, data.rows[i]))
        texts = "".join(f'<p class="text">“{escape(t)}”</p>' for t in shown["texts"] if t)
        refs = "".join(f"<li>{escape(r)}</li>" for r in references[i])
        cards.append(f'<div class="example"><div class="media">{media}</div><div class="meta">'
                     f'<div class="row">row {data.rows[i]} · ROUGE-L {scores[i]:.2f}</div>{texts}'
                     f'<div>generated <b>{escape(generated[i]) or "(nothing)"}</b></div>'
                     f'<div class="small">reference{"s" if len(references[i]) > 1 else ""}</div>'
                     f'<ul class="small">{refs}</ul></div></div>')
    note = "Ranked by each row's ROUGE-L against its best reference; inputs as the model read them."
    return sections.section(id_, title, f'<div class="examples">{"".join(cards)}</div>', note)


def audio_players(cfg, table, row: int) -> list[str]:
    """<audio> elements with the row's recordings inline (base64), so the page still plays offline."""
    out = []
    for col, m in cfg.schema.streams():
        value = table.df.at[row, col]
        if m != "audio" or is_missing(value):
            continue
        path = Path(table.resolve(value))
        mime = AUDIO_MIME.get(path.suffix.lower())
        if mime is None or not path.is_file() or path.stat().st_size > MAX_EMBEDDED_AUDIO:
            continue
        data = base64.b64encode(path.read_bytes()).decode()
        out.append(f'<audio controls preload="none" src="data:{mime};base64,{data}" style="width:150px"></audio>')
    return out
