"""Scores of generated text against one or more references per row.

BLEU-4, ROUGE-L and CIDEr-D with the COCO caption evaluation's own scorers (pycocoevalcap), on
text lower-cased and split at punctuation the way its PTB tokenizer does (which needs Java, so
it is not called); WER and CER with jiwer against each row's first reference; exact match after
the same normalisation, against any reference.
"""
from __future__ import annotations

import re

_PUNCT = re.compile(r"[^\w\s]")


def normalise(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", str(text).lower()).split())


def scorer_inputs(generated: list[str], references: list[list[str]]) -> tuple[dict, dict]:
    """({row: [hypothesis]}, {row: [references]}) normalised, as the COCO scorers take them. The
    scorers need a non-empty hypothesis; an empty generation scores as a lone unknown word."""
    res = {i: [normalise(g) or "<empty>"] for i, g in enumerate(generated)}
    gts = {i: [normalise(r) or "<empty>" for r in refs] for i, refs in enumerate(references)}
    return res, gts


def text_metrics(generated: list[str], references: list[list[str]]) -> dict:
    """{"n", "bleu4", "rouge_l", "cider", "wer", "cer", "exact_match"} over the rows."""
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generations for {len(references)} rows of references")
    if not generated:
        return {"n": 0}
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    import jiwer
    res, gts = scorer_inputs(generated, references)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    first = [gts[i][0] for i in range(len(generated))]
    hyp = [res[i][0] for i in range(len(generated))]
    exact = sum(res[i][0] in gts[i] for i in res) / len(res)
    return {"n": len(generated), "bleu4": float(bleu[3]), "rouge_l": float(rouge), "cider": float(cider),
            "wer": float(jiwer.wer(first, hyp)), "cer": float(jiwer.cer(first, hyp)), "exact_match": exact}


HEADLINE = "cider"


def row_scores(generated: list[str], references: list[list[str]]) -> list[float]:
    """Each row's ROUGE-L F (0-1, against its best reference): the report's best and worst rows."""
    from pycocoevalcap.rouge.rouge import Rouge
    if not generated:
        return []
    res, gts = scorer_inputs(generated, references)
    _, per_row = Rouge().compute_score(gts, res)
    return [float(x) for x in per_row]


def format_metrics(m: dict, baseline: dict | None = None) -> str:
    names = ("bleu4", "rouge_l", "cider", "wer", "cer", "exact_match")
    lines = [f"{'metric':<12} {'model':>8}" + (f" {'nearest':>8}" if baseline else "")]
    for k in names:
        if k in m:
            lines.append(f"{k:<12} {m[k]:>8.4f}" + (f" {baseline[k]:>8.4f}" if baseline else ""))
    lines.append(f"rows: {m.get('n', 0)}" + ("   (nearest: the training text of the most similar training "
                                             "input, by the run's own embeddings)" if baseline else ""))
    return "\n".join(lines)
