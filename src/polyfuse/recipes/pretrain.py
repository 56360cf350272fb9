"""The self-supervised pretraining recipe: an unlabeled table -> processors -> encoded rows -> model +
objectives -> Trainer.fit -> a run folder (kind `pretrained`) whose encoders and fusion
`polyfuse train --init-from` starts from, and that `polyfuse embed` / `search` read.

Same run folder as training: processors/ and schema.json first, then, at each epoch that lowers the
held-out loss, model.safetensors (encoders, fusion and the objectives' heads under `objectives.`)
and config.json renamed into place last, and one log.jsonl line per epoch with every objective's
loss and each one's loss on the held-out rows. checkpoint/ holds the optimizer, schedule position and RNG after every
epoch, so `resume=True` continues an interrupted run exactly as an unbroken one.
"""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import Config
from ..data.dataset import EncodedSet, encode_table, make_collate
from ..data.manifest import read_table, resolve_schema
from ..data.processors import Processors
from ..encoders.pretrained import fill_feature_caches
from ..errors import InputError
from ..evaluation.metrics import roc_auc
from ..model import build_model
from ..objectives import Pretrainer, build_objectives, resolve_objectives
from ..planning import holdout
from ..planning.run import plan_config
from ..runfolder import RunFolder, RunMeta
from ..training.trainer import Trainer, make_accelerator
from ..util import to_device

# Share of ITM's negatives rated as similar as a true pair above which the run warns (from epoch 2)
# that the pairing looks many-to-many; where each row has one partner it falls as embeddings learn.
SUSPECT_WARNING = 0.3


def pretrain_run(cfg: Config, data, out: str | Path = "runs/pre", base_dir=None, progress: bool = True,
                 val=None, resume: bool = False, fixed: set[str] | None = None, preset: str | None = None) -> dict:
    """cfg.pretrain says which objectives run (None: every one the columns allow). val: a held-out
    table (None: train.val_fraction of the rows, as in training), scored with every objective after
    each epoch (logged as val_<name>_loss; masks and negatives drawn from a fixed seed, so epochs
    compare); the epoch with the lowest summed loss on it is the run's result, and train.patience
    epochs without a lower one stop the run. fixed, preset: as in recipes.train.train_run
    (the keys the user set; the plan chooses the rest from the table)."""
    folder = RunFolder(out)
    cfg = folder.start(cfg, resume)
    acc = make_accelerator(cfg.train.bf16)
    say = acc.print

    # 1. Table and schema: columns only, labels (if any) are ignored; objectives checked before anything runs.
    table = read_table(data, base_dir)
    schema = resolve_schema(table, dataclasses.replace(cfg.schema, label=None, task=None))
    cfg = resolve_objectives(dataclasses.replace(cfg, schema=schema).validate())
    pcfg = cfg.pretrain
    val_t = read_table(val, base_dir) if val is not None else None
    if val_t is None:
        # Contrastive heads on frozen towers memorise a few thousand pairs within a few epochs (emoji:
        # held-out loss lowest at epoch 3 of 31, then rising while the training loss falls 100x), so
        # the epochs are ranked on held-out rows as in training; too few rows: every row trains.
        table, val_t, split_note = holdout(table, schema, cfg.train.val_fraction, cfg.train.group_by,
                                           cfg.train.seed)
        say(split_note)
    for t in [table] + ([val_t] if val_t is not None else []):
        if pcfg.match_column is not None and pcfg.match_column not in t.df.columns:
            raise InputError(f"pretrain.match_column '{pcfg.match_column}' is not in the table",
                             table=t.name, column=pcfg.match_column)
    say(f"schema: text={schema.text} image={schema.image} audio={schema.audio}; "
        f"objectives: {', '.join(pcfg.objectives)}"
        + (f"; rows with equal {pcfg.match_column!r} are not each other's negatives" if pcfg.match_column else ""))
    if fixed is not None:
        cfg = plan_config(cfg, table, folder, fixed, preset, resume, None, None, say, acc.is_main_process,
                          supervised=False)

    # 2. Processors, fitted on the main process, read back by the others; then every row decoded.
    with acc.main_process_first():
        if acc.is_main_process and not (resume and folder.has_processors()):
            processors = Processors.build(cfg, schema).fit(table)
            folder.write_preprocessing(processors)
        else:
            processors = folder.processors(cfg)
    with acc.main_process_first():      # the main process fills the decode cache; the others find it filled
        rows = encode_table(table, processors, None, cfg.train.on_bad_row, progress and acc.is_main_process)
    groups = match_groups(table, rows, pcfg.match_column)
    val_rows = val_groups = None
    if val_t is not None:
        val_rows = encode_table(val_t, processors, None, cfg.train.on_bad_row, False)
        val_groups = match_groups(val_t, val_rows, pcfg.match_column)

    # 3. Model (its head is never trained here and never saved) and objectives.
    torch.manual_seed(cfg.train.seed)
    # Pretrained towers (--text-encoder ...) start from their checkpoints here as in training.
    model = build_model(cfg, processors, 1, pretrained_weights=True)
    pre = Pretrainer(model, build_objectives(cfg, model, processors), pcfg.weights)
    n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head."))
    say(f"model: {cfg.model.fusion} fusion, d={cfg.model.d_model}, {cfg.model.n_layers} layers, "
        f"{n_params / 1e6:.2f}M parameters; {len(rows)} unlabeled rows")
    collate = with_groups(make_collate(processors), groups)
    augment = None
    if cfg.augment.enabled:
        from ..data.augment import Augmenter, augmenting
        augment = augmenting(Augmenter(cfg.augment, processors))

    # 4. Trainer.fit with the objectives' summed loss as the step.
    def validate(raw):
        return validation_losses(raw, val_rows, with_groups(make_collate(processors), val_groups),
                                 cfg.train.batch_size, acc.device, cfg.train.seed)

    text = processors.text
    warned = []

    def on_epoch(raw, record, improved):
        if improved:    # the folder holds the best epoch so far (the last one without validation rows)
            meta = RunMeta("pretrained", cfg, text.vocab_size if text is not None else None, None,
                           {"epoch": record["epoch"], "rows": len(rows), "n_parameters": n_params})
            folder.write_model(raw.encoder_state(), meta)
        suspect = record.get("itm_suspect_negatives")
        # From the second epoch: at random initialisation hard negatives are close on any data.
        if (suspect is not None and suspect > SUSPECT_WARNING and record["epoch"] >= 2
                and pcfg.match_column is None and not warned):
            warned.append(record["epoch"])
            say(f"warning: {suspect:.0%} of ITM's negatives look as similar as a true pair; if several rows "
                "match each other (a many-to-many pairing), ITM cannot learn: name the column that says which "
                "rows match with pretrain.match_column (--match-column), or turn off pretrain.hard_negatives")

    with acc.main_process_first():      # the main process fills the feature cache; the others find it filled
        fill_feature_caches(pre, [(len(rows), lambda idx: collate(idx, rows))]
                            + ([(len(val_rows), lambda idx: make_collate(processors)(idx, val_rows))] if val_rows else []),
                            cfg.train.batch_size, cfg.data, say)
    trainer = Trainer(cfg.train, acc, folder, progress=progress, desc="pretrain", data=cfg.data)
    state = trainer.fit(pre, len(rows), lambda idx: collate(idx, rows), lambda m, b: m(b),
                        validate if val_rows is not None else None, on_epoch, resume, augment)
    return {"epoch": state["epoch"], "step": state["step"], "stopped": state["stopped"], "rows": len(rows),
            "n_parameters": n_params, "world_size": state["world_size"], "elapsed_s": state["elapsed_s"],
            "log": trainer.log}


def match_groups(table, rows: EncodedSet, column: str | None) -> torch.Tensor | None:
    """(N,) an id per encoded row, equal where the match column's values are (None: no column)."""
    if column is None:
        return None
    codes = pd.factorize(table.df[column].iloc[rows.rows].astype("string"))[0]      # missing -> -1
    missing = codes < 0
    # A row with no value matches nothing but itself: each gets an id of its own.
    codes[missing] = codes.max() + 1 + np.arange(int(missing.sum()))
    return torch.as_tensor(codes, dtype=torch.long)


def with_groups(collate, groups: torch.Tensor | None):
    """The collate function, adding batch["group"] (B,) when a match column is in use."""
    if groups is None:
        return collate

    def fn(idx, data):
        return {**collate(idx, data), "group": groups[idx]}
    return fn


@torch.no_grad()
def validation_losses(pre: Pretrainer, rows, collate, batch_size: int, device, seed: int) -> dict:
    """{val_loss, val_<objective>_loss, ..., score} over held-out rows, eval mode. Masks and negatives
    come from a generator seeded the same every epoch (the training RNG is left untouched, so resuming
    stays exact). The score that ranks epochs: with the contrastive objective, held-out retrieval
    (val_mrr, below); without it, the negative summed loss."""
    was_training = pre.training
    pre.eval()
    sums, seen, itm = {}, 0, ([], [])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for a in range(0, len(rows), batch_size):
            idx = list(range(a, min(a + batch_size, len(rows))))
            got = pre(to_device(collate(idx, rows), device))
            for k, v in got.items():
                if k.endswith("loss"):
                    sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
            if "itm_logits" in got:
                itm[0].append(got["itm_logits"].cpu())
                itm[1].append(got["itm_labels"].cpu())
            seen += len(idx)
    out = {f"val_{k}": v / max(1, seen) for k, v in sums.items()}
    out["score"] = -out["val_loss"]
    if itm[0]:
        # Does matching tell a held-out row from the same row with one cell from a random other row?
        # 0.5 = chance, whatever the share of negatives.
        y, logit = torch.cat(itm[1]).numpy(), torch.cat(itm[0]).numpy()
        auc = roc_auc(y.astype(int), np.stack([-logit, logit], 1))
        if auc is not None:
            out["val_itm_auc"] = auc
    if "contrastive" in pre.objectives:
        out["val_mrr"] = out["score"] = held_out_mrr(pre, rows, collate, batch_size, device)
    pre.train(was_training)
    return out


def held_out_mrr(pre: Pretrainer, rows, collate, batch_size: int, device) -> float:
    """Mean reciprocal rank of each held-out row's partner among all held-out rows, both directions,
    averaged over the contrastive objective's column pairs (rows with an equal match column are not
    counted as each other's competitors).

    Why not the held-out contrastive loss: with a learned temperature the loss also pays for
    confidence, and on emoji it climbed from epoch 3 while retrieval kept improving to epoch 31
    (R@10 0.27 at the loss's best epoch, 0.39 at the last). Ranking is what embed and search use."""
    con = pre.objectives["contrastive"]
    vecs, present, groups = {}, {}, []
    for a in range(0, len(rows), batch_size):
        batch = to_device(collate(list(range(a, min(a + batch_size, len(rows)))), rows), device)
        for col, part in batch["inputs"].items():
            if col in con.index:
                v, p = con.column_vector(pre.model, col, part)
                vecs.setdefault(col, []).append(torch.nn.functional.normalize(v.float(), dim=-1))
                present.setdefault(col, []).append(p)
        if "group" in batch:
            groups.append(batch["group"])
    vecs = {c: torch.cat(v) for c, v in vecs.items()}
    present = {c: torch.cat(p) for c, p in present.items()}
    group = torch.cat(groups) if groups else None
    scores = []
    for a, b in itertools.combinations(vecs, 2):
        if a in con.locked and b in con.locked:
            continue
        both = present[a] & present[b]
        if int(both.sum()) < 2:
            continue
        sim = vecs[a][both] @ vecs[b][both].T                                   # (N, N)
        others = ~torch.eye(len(sim), dtype=torch.bool, device=sim.device)
        if group is not None:
            g = group[both]
            others &= g[:, None] != g[None, :]
        for s in (sim, sim.T):
            rank = 1 + ((s > s.diagonal()[:, None]) & others).sum(1)               # (N,) 1 = first
            scores.append((1.0 / rank.float()).mean())
    return float(torch.stack(scores).mean()) if scores else 0.0
