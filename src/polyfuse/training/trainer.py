"""The one training loop, on accelerate: the same code on 1 process or N (torchrun -> DDP).

Supervised training, pretraining and pruning's fine-tune are recipes (polyfuse/recipes/) that hand
`Trainer.fit` their rows, a collate function and a step function:

    step(module, batch) -> {"loss": scalar, "<name>": scalar, ...}     every value is logged per epoch
    validate(raw_module) -> {"val_loss": ..., "score": ..., ...}       optional, after each epoch
    on_epoch(raw_module, record, improved)                             main process: save the model

Budgets: train.epochs, train.max_minutes (every rank stops at the same step) and early stopping on
the validation score (train.patience). With train.fill_budget the number of epochs is chosen from
the speed of the first steps (and again after the first epoch, validation included) so that the
run ends inside the budget, with its cosine schedule complete (and patience is at least a quarter
of it). With train.ema_epochs, validation, the best epoch and the result use a moving average of
the weights (training/average.py). Reproducibility: each epoch's order comes from a generator
seeded with (seed, epoch), and the global RNG (dropout, masks) is saved in every checkpoint, so a
resumed run takes exactly the steps an unbroken one would.
"""
from __future__ import annotations

import math
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from tqdm.auto import tqdm

from ..config import OBJECTIVES, DataConfig, TrainConfig
from ..data.loader import BatchStream, ThreadTuner, worker_count
from ..runfolder import RunFolder
from ..util import state_dict_cpu, to_device
from .average import WeightAverage
from .schedule import warmup_cosine

Step = Callable[[torch.nn.Module, dict], dict]
PROBE_STEPS = 20        # fill_budget: steps timed before the first estimate
BUDGET_SHARE = 0.92     # fill_budget: the share of max_minutes planned for epochs (the rest: final evaluation)


def make_accelerator(bf16: bool = False) -> Accelerator:
    # find_unused_parameters: a batch may lack a modality (absent cells, modality dropout), so
    # its encoder gets no gradient in that step; DDP must not wait for one.
    # cpu=True where there is no GPU: without it accelerate ignores torchrun's environment on a CPU
    # machine and every process trains alone, all writing the same run folder.
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="bf16" if bf16 else "no",
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list[int]]:
    """This process's batches for one epoch: a seeded permutation, padded so every rank gets as many."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    per_rank = math.ceil(n / world)
    perm += perm[: per_rank * world - n]
    mine = perm[rank::world]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float,
                 lr_scales: dict[torch.nn.Module, float] | None = None) -> list[dict]:
    """No weight decay on biases, norms, embeddings and position/modality vectors; the parameters
    of each module in lr_scales learn at lr times its scale (a pretrained part trained whole)."""
    scale_of = {id(p): s for m, s in (lr_scales or {}).items() for p in m.parameters()}
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = p.ndim >= 2 and "pos" not in name and ".tok." not in name
        groups.setdefault((decays, scale_of.get(id(p), 1.0)), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decays else 0.0, "lr": lr * scale}
            for (decays, scale), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0], -kv[0][1]))]


@dataclass
class TrainState:
    """What a checkpoint's trainer.json holds: where the run is, and its best epoch so far."""
    epoch: int = 0
    step: int = 0
    best_score: float | None = None
    best_val_loss: float | None = None
    best_epoch: int | None = None
    top_score: float | None = None   # the highest validation score seen (the best epoch's may be within noise of it)
    rising_epoch: int | None = None  # the last epoch whose score beat every earlier one by more than its noise
    bad_epochs: int = 0              # epochs since the score or the validation loss last improved
    lowest_val_loss: float | None = None
    elapsed_s: float = 0.0
    stopped: str | None = None       # "max_minutes", "early_stopping", or None (ran every epoch)
    epochs: int | None = None        # fill_budget: the epochs chosen to fill the budget
    epoch_times: list = field(default_factory=list)   # fill_budget: seconds per epoch, validation included
    # A mid-epoch checkpoint (train.checkpoint_every): the batches of epoch `epoch` already trained
    # (its order is a seeded permutation, so this index is the whole data position), and the rows
    # and summed step values so far, so the epoch's logged means equal an unbroken run's.
    batch: int = 0
    epoch_seen: int = 0
    epoch_sums: dict = field(default_factory=dict)
    threads: int | None = None       # the training process's intra-op threads, chosen by data.loader.ThreadTuner

    def better(self, record: dict) -> bool:
        """A validation score above the best seen by more than its noise, or one within that noise at
        a lower validation loss (Breiman's one-standard-error rule, ties to the proper score). On a
        few hundred rows accuracy moves by single rows from epoch to epoch: the luckiest epoch is
        not the best model, and the loss still tells epochs apart. Noise 0 (regression): the score
        alone, ties to the lower loss."""
        if "score" not in record or self.best_score is None:
            return True
        top = self.best_score if self.top_score is None else self.top_score
        noise = score_noise(record)
        if record["score"] > top + noise:
            return True
        return record["score"] >= top - noise and record["val_loss"] < self.best_val_loss

    def note_score(self, record: dict):
        """After `better`: the highest score so far, and the epoch that last raised it beyond its noise."""
        if "score" not in record:
            return
        if self.top_score is None or record["score"] > self.top_score + score_noise(record):
            self.rising_epoch = self.epoch
        self.top_score = record["score"] if self.top_score is None else max(self.top_score, record["score"])


def score_noise(record: dict) -> float:
    """How far a validation score moves by chance (validate's `score_noise`; none given: any rise counts)."""
    return max(record.get("score_noise", 0.0), 1e-9)


@dataclass
class Trainer:
    """AdamW (no decay on norms and embeddings), linear warm-up then cosine, clipping, budgets,
    checkpoints in `folder` (None: no checkpoints, e.g. a fine-tune in memory)."""
    cfg: TrainConfig
    accelerator: Accelerator
    folder: RunFolder | None = None
    lr_scale: float = 1.0
    module_lr_scales: dict = field(default_factory=dict)   # {module: share of the learning rate} (param_groups)
    progress: bool = True
    desc: str = "epoch"
    spent_s: float = 0.0      # seconds of max_minutes already used before fit (reading the tables)
    data: DataConfig = field(default_factory=DataConfig)     # DataLoader workers and prefetch
    log: list[dict] = field(default_factory=list)

    def fit(self, module: torch.nn.Module, n_rows: int, batch: Callable[[list[int]], dict], step: Step,
            validate: Callable[[torch.nn.Module], dict] | None = None,
            on_epoch: Callable[[torch.nn.Module, dict, bool], None] | None = None, resume: bool = False,
            augment: Callable[[dict], dict] | None = None,
            before_epoch: Callable[[torch.nn.Module, int, int], None] | None = None) -> dict:
        """Train `module` on rows 0..n_rows-1; batch(indices) reads and collates them, in DataLoader
        workers (data.workers), so it must not draw random numbers; augment(batch) runs here, in the
        training process, on the global RNG that checkpoints save (so resuming stays exact). Returns
        the final TrainState (as a dict) plus steps_per_epoch and world_size. The best weights (by
        validation) are loaded back into the module at the end. before_epoch(raw, epoch, planned_epochs)
        runs on every rank before each epoch (a resumed run included): recipes with stages switch what
        trains there."""
        workers = worker_count(self.data, n_rows)
        tuner = ThreadTuner(workers, None)
        try:
            return self._fit(module, n_rows, batch, step, validate, on_epoch, resume, augment, before_epoch,
                             workers, tuner)
        finally:
            tuner.close()           # torch's thread count as it was before the run

    def _fit(self, module, n_rows, batch, step, validate, on_epoch, resume, augment, before_epoch,
             workers: int, tuner: ThreadTuner) -> dict:
        tc, acc = self.cfg, self.accelerator
        rank, world = acc.process_index, acc.num_processes
        steps_per_epoch = len(epoch_batches(n_rows, tc.batch_size, tc.seed, 0, rank, world))
        state, best = TrainState(), None
        saved = self.folder.load_checkpoint() if resume and self.folder is not None else None
        if saved is not None:
            state = TrainState(**saved["trainer"])
            tuner.use(state.threads)
        if steps_per_epoch < 1 + tuner.steps * len(tuner.options):
            tuner.use(tuner.before)     # too few steps to time inside one epoch (validation would count): the default
        # The schedule's length: the epochs in force, which fill_budget may change after its probe.
        total = [steps_per_epoch * (state.epochs or tc.epochs)]
        # foreach: one multi-tensor update instead of a Python loop of small ops per tensor (torch
        # only defaults to it on GPUs); on a CPU the same values, bit for bit, 1.6x faster here.
        opt = torch.optim.AdamW(param_groups(module, tc.weight_decay, tc.lr * self.lr_scale, self.module_lr_scales),
                                betas=(0.9, 0.98), foreach=True)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, total[0], int(tc.warmup_ratio * total[0])))
        if saved is not None:
            best = saved["best"]
            self._restore(saved, module, opt, sched, state)
        # Every step so far is in the average (a resumed run reads it back from the checkpoint).
        average = WeightAverage(tc.ema_epochs * steps_per_epoch, saved["average"] if saved else None,
                                state.step) if tc.ema_epochs else None
        wrapped, opt = acc.prepare(module, opt)
        raw = acc.unwrap_model(wrapped)

        # Workers stay up across epochs; each epoch hands them its own seeded order.
        stream = BatchStream(batch, workers, self.data.prefetch, persistent=True)
        t_start = time.perf_counter() - state.elapsed_s - self.spent_s
        fill = tc.fill_budget and tc.max_minutes is not None
        t_probe, probe_from = time.perf_counter(), max(1, state.step)    # a run resumed mid-probe times from here
        while state.epoch < (state.epochs or tc.epochs) and state.stopped is None:
            if before_epoch is not None:
                before_epoch(raw, state.epoch, state.epochs or tc.epochs)
            wrapped.train()
            batches = epoch_batches(n_rows, tc.batch_size, tc.seed, state.epoch, rank, world)
            todo = batches[state.batch:]        # all of them, unless resuming mid-epoch
            bar = tqdm(todo, desc=f"{self.desc} {state.epoch + 1}/{state.epochs or tc.epochs}", leave=False,
                       initial=state.batch, total=len(batches), mininterval=0.5,
                       disable=None if self.progress and acc.is_main_process else True)
            t_epoch, seen, sums = time.perf_counter(), state.epoch_seen, dict(state.epoch_sums)
            seen_before = seen
            for idx, made in zip(bar, stream(todo)):
                tuner.before_step(state.step + 1)
                b = to_device(made if augment is None else augment(made), acc.device)
                with acc.autocast():
                    out = step(wrapped, b)
                self._optimizer_step(wrapped, opt, sched, out["loss"])
                state.step += 1
                if average is not None:
                    average.update(raw)
                if (chosen := tuner.after_step(state.step)) is not None:
                    state.threads = chosen
                    acc.print(f"training threads beside {workers} data worker(s): {chosen} (faster of "
                              f"{' and '.join(map(str, tuner.options))} over {tuner.steps} steps each)")
                state.batch += 1
                seen += len(idx)
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
                bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}")
                if fill and state.epoch == 0 and state.step == min(PROBE_STEPS, steps_per_epoch - 1) >= 2:
                    # Steps after the first (which pays one-off costs), scaled to an epoch; 10% on top
                    # for validation and the checkpoint until the first whole epoch is measured.
                    per_step = (time.perf_counter() - t_probe) / max(1, state.step - probe_from)
                    self._fill(state, total, steps_per_epoch, 1.1 * per_step * steps_per_epoch, self.spent_s)
                if state.step == 1:
                    t_probe, probe_from = time.perf_counter(), 1
                if tc.max_minutes is not None and self._over_budget(t_start):
                    state.stopped = "max_minutes"
                    break
                if tc.checkpoint_every and state.step % tc.checkpoint_every == 0 and state.batch < len(batches):
                    state.epoch_seen, state.epoch_sums = seen, sums
                    state.elapsed_s = time.perf_counter() - t_start
                    if acc.is_main_process and self.folder is not None:
                        self.folder.save_checkpoint(state_dict_cpu(raw), best, opt, vars(state),
                                                    average.state if average is not None else None)
                    acc.wait_for_everyone()
                after_step(vars(state))
            state.epoch += 1
            state.batch, state.epoch_seen, state.epoch_sums = 0, 0, {}
            record = {"epoch": state.epoch, "step": state.step, "train_loss": sums.get("loss", 0.0) / max(1, seen)}
            record.update({k: v / max(1, seen) for k, v in sums.items() if k != "loss"})
            record.update(lr=sched.get_last_lr()[0], world_size=world,
                          samples_per_s=(seen - seen_before) * world / max(1e-9, time.perf_counter() - t_epoch))
            # From here to the checkpoint the module holds the average: validated, kept, saved.
            live = average.swap_in(raw) if average is not None else None
            if validate is not None:
                record.update(validate(raw))
            improved = state.better(record)
            state.note_score(record)
            if improved:
                state.best_score, state.best_val_loss = record.get("score"), record.get("val_loss")
                state.best_epoch = state.epoch
                # Only a validation score ranks epochs; without one the last epoch is the result,
                # so there is no best copy to keep.
                best = state_dict_cpu(raw) if "score" in record else None
            # A plateau is neither the score nor the loss improving: near the top, accuracy on a few
            # hundred rows moves by single rows while the loss still falls as the schedule cools.
            loss = record.get("val_loss")
            lower = loss is not None and (state.lowest_val_loss is None or loss < state.lowest_val_loss - 1e-9)
            if lower:
                state.lowest_val_loss = loss
            if improved or lower:
                state.bad_epochs = 0
            else:
                state.bad_epochs += 1
                if tc.patience is not None and state.bad_epochs >= self._patience(state):
                    state.stopped = "early_stopping"
            state.elapsed_s = time.perf_counter() - t_start
            if fill:
                state.epoch_times.append(round(time.perf_counter() - t_epoch, 3))
            if fill and state.stopped is None and (state.epochs is None or state.epoch <= max(2, state.epochs / 2)):
                # Re-planned on the median epoch so far, in the first half only (and after epoch 2
                # always): one slow epoch (a busy machine) must not cut the run short, and late
                # changes would bend the schedule's end. The first epoch pays one-off costs (a
                # frozen tower filling its feature cache can make it 10x the others), so once
                # there are later epochs it no longer counts. After the first epoch (which
                # replaces the probe's guess), small differences (< 10%) keep the plan.
                epoch_s = statistics.median(state.epoch_times[1:] or state.epoch_times)
                self._fill(state, total, steps_per_epoch, epoch_s, state.elapsed_s,
                           tolerance=0.0 if state.epoch == 1 else 0.1)
            record["elapsed_s"] = round(state.elapsed_s, 2)
            self.log.append(record)
            if acc.is_main_process:
                if on_epoch is not None:
                    on_epoch(raw, record, improved)
            if live is not None:
                average.swap_out(raw, live)
            if acc.is_main_process:
                if self.folder is not None:
                    self.folder.save_checkpoint(state_dict_cpu(raw), best, opt, vars(state),
                                                average.state if average is not None else None)
                    self.folder.append_log(record)
                acc.print(epoch_line(record))
            acc.wait_for_everyone()
            after_epoch(vars(state))
        if best is not None:
            raw.load_state_dict(best)
        elif average is not None:       # no validation: the last average is the result
            average.swap_in(raw)
        return {**vars(state), "steps_per_epoch": steps_per_epoch, "world_size": world}

    def _patience(self, state: TrainState) -> int:
        """train.patience; with fill_budget, at least a quarter of the planned epochs (the share a
        run without a budget gets from the plan). The schedule was stretched to fill the budget, and
        a plateau at the peak rate often gives way as the rate anneals: on an unheard voice the
        last epoch beat the plateau's best in every digit-sequence run that reached it."""
        if self.cfg.fill_budget and state.epochs:
            return max(self.cfg.patience, state.epochs // 4)
        return self.cfg.patience

    def _fill(self, state: TrainState, total: list, steps_per_epoch: int, epoch_s: float, done_s: float,
              tolerance: float = 0.0):
        """Choose the epochs that fit the budget: `done_s` spent, `epoch_s` per epoch from now on.
        With a tolerance, a plan within that share of the current one is left as it is."""
        budget_s = self.cfg.max_minutes * 60 * BUDGET_SHARE
        epochs = state.epoch + max(0, math.floor((budget_s - done_s) / max(epoch_s, 1e-6)))
        epochs = max(1, min(10_000, epochs))
        if state.epochs is not None and abs(epochs - state.epochs) <= tolerance * state.epochs:
            epochs = state.epochs
        if self.accelerator.num_processes > 1:    # every rank must plan the same length
            t = torch.tensor(float(epochs), device=self.accelerator.device)
            epochs = int(self.accelerator.reduce(t, reduction="mean").round())
        if epochs != state.epochs:
            self.accelerator.print(f"budget: {self.cfg.max_minutes:g} min, about {epoch_s:.1f} s per epoch: "
                                   f"{epochs} epoch(s) planned")
        state.epochs = epochs
        total[0] = steps_per_epoch * epochs

    def _restore(self, saved: dict, module, opt, sched, state: TrainState):
        """Put a checkpoint back: weights, optimizer, RNG, and the schedule moved on to its step."""
        module.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        with warnings.catch_warnings():     # fast-forwarding the schedule, not training
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(state.step):
                sched.step()
        where = f"in epoch {state.epoch + 1} after batch {state.batch}" if state.batch else f"after epoch {state.epoch}"
        self.accelerator.print(f"resuming {where} (step {state.step})")

    def _optimizer_step(self, module, opt, sched, loss: torch.Tensor):
        acc = self.accelerator
        acc.backward(loss)
        if self.cfg.grad_clip:
            acc.clip_grad_norm_(module.parameters(), self.cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    def _over_budget(self, t_start: float) -> bool:
        acc = self.accelerator
        over = torch.tensor(float(time.perf_counter() - t_start > self.cfg.max_minutes * 60), device=acc.device)
        if acc.num_processes > 1:    # every rank must stop at the same step, or DDP hangs
            over = acc.reduce(over, reduction="sum")
        return bool(over > 0)


def epoch_line(r: dict) -> str:
    """One line per epoch: train loss, each pretraining objective's loss, validation values, speed."""
    shown = ["train_loss"] + [f"{o}_loss" for o in OBJECTIVES] + [k for k in r if k.startswith("val_")]
    parts = [f"epoch {r['epoch']}"] + [f"{k} {r[k]:.4f}" for k in shown if k in r]
    parts.append(f"{r['samples_per_s']:.0f} samples/s")
    return "  ".join(parts)


def after_epoch(state: dict):
    """Hook for tests (interrupt a run after an epoch to check that --resume continues it exactly)."""


def after_step(state: dict):
    """Hook for tests (kill a run mid-epoch, after a mid-epoch checkpoint)."""
