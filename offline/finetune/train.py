"""The LoRA training loop: length-grouped batches, completion-only loss, encrypted checkpoints, resume.

Two things make it faster than a plain ``model(..., labels=...)`` loop on CPU:

- batches are grouped by length (shuffled within and across groups), so little time goes to padding;
- the output layer runs only on positions that carry a label. With completion-only loss most
  positions are masked, and for small models the vocabulary projection (49k x 576 for SmolLM2) is a
  large share of the work, forward and backward.

Checkpoints hold the LoRA weights, the AdamW moments, the torch RNG state and the loop position,
serialised with safetensors (no pickle) and sealed with AES-GCM by the caller's store.
"""

from __future__ import annotations

import json
import math
import random
import signal
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import OfflineError, ParameterError, UsageError
from .data import IGNORE

Encoded = list[tuple[list[int], list[int]]]


class TrainingInterrupted(OfflineError):
    """Ctrl-C during training: the last checkpoint is kept for ``--resume``."""

    exit_code = 130


@dataclass
class TrainConfig:
    """Hyperparameters (all recorded in the adapter's lineage)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    epochs: int = 1
    lr: float = 2e-4
    max_steps: int | None = None
    batch_size: int = 4
    max_len: int = 512
    eval_split: float = 0.1
    seed: int = 0
    warmup_steps: int | None = None
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def validate(self) -> None:
        # nan slips through every comparison below and inf through most: refuse both first.
        for name in ("alpha", "lr", "eval_split", "dropout"):
            if not math.isfinite(float(getattr(self, name))):
                raise ParameterError(f"{{{name}}} must be a finite number", name)
        if self.rank < 1 or self.rank > 1024:
            raise ParameterError("{rank} must be between 1 and 1024", "rank")
        if self.alpha <= 0:
            raise ParameterError("{alpha} must be positive", "alpha")
        if self.epochs < 1:
            raise ParameterError("{epochs} must be at least 1", "epochs")
        if not 0 < self.lr < 1:
            raise ParameterError("{lr} must be in (0, 1)", "lr")
        if self.max_steps is not None and self.max_steps < 1:
            raise ParameterError("{max_steps} must be at least 1", "max_steps")
        if self.batch_size < 1 or self.max_len < 8:
            raise ParameterError("{batch_size} must be >= 1 and {max_len} >= 8", "batch_size", "max_len")
        if not 0 <= self.dropout < 1:
            raise ParameterError("{dropout} must be in [0, 1)", "dropout")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    state: dict[str, Any]  # PEFT LoRA state dict (cpu tensors)
    loss_curve: list[list[float]]  # [step, loss]
    eval_loss_before: float | None
    eval_loss_after: float | None
    steps: int
    tokens: int
    train_seconds: float
    resumed_from: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds > 0 else 0.0


# -- batching ---------------------------------------------------------------------------------


def epoch_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, *, group: int = 16
) -> list[list[int]]:
    """Deterministic length-grouped batches for one epoch (same on resume)."""
    rng = random.Random(seed * 1000003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    mega = batch_size * group
    for i in range(0, len(order), mega):
        chunk = sorted(order[i : i + mega], key=lambda j: lengths[j])
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def schedule(lengths: list[int], cfg: TrainConfig) -> list[list[int]]:
    """Every step's batch for the whole run: ``epochs`` passes, or exactly ``max_steps`` when given
    (like transformers' Trainer, max_steps overrides the epoch count)."""
    steps: list[list[int]] = []
    epoch = 0
    while (len(steps) < cfg.max_steps) if cfg.max_steps else (epoch < cfg.epochs):
        steps += epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch)
        epoch += 1
    return steps[: cfg.max_steps] if cfg.max_steps else steps


def collate(items: Encoded, idx: list[int], pad_id: int, device: str) -> tuple[Any, Any, Any]:
    """Right-padded (input_ids, attention_mask, labels) tensors."""
    import torch

    width = max(len(items[i][0]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(idx), width), dtype=torch.long)
    lab = torch.full((len(idx), width), IGNORE, dtype=torch.long)
    for r, i in enumerate(idx):
        x, y = items[i]
        ids[r, : len(x)] = torch.tensor(x)
        att[r, : len(x)] = 1
        lab[r, : len(y)] = torch.tensor(y)
    return ids.to(device), att.to(device), lab.to(device)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up then linear decay to zero."""
    warm = cfg.warmup_steps if cfg.warmup_steps is not None else min(10, max(1, total // 10))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * max(0.0, (total - step) / max(1, total - warm))


# -- loss -------------------------------------------------------------------------------------


def _parts(peft_model: Any) -> tuple[Any, Any, float | None]:
    inner = peft_model.get_base_model()
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else inner.model
    softcap = getattr(inner.config, "final_logit_softcapping", None)
    return decoder, inner.get_output_embeddings(), softcap


def label_loss(peft_model: Any, ids: Any, att: Any, lab: Any) -> tuple[Any, int]:
    """Summed next-token cross-entropy over labelled positions only, and their count."""
    import torch
    import torch.nn.functional as F

    decoder, head, softcap = _parts(peft_model)
    hidden = decoder(input_ids=ids, attention_mask=att).last_hidden_state[:, :-1]
    target = lab[:, 1:]
    keep = target != IGNORE
    n = int(keep.sum())
    if n == 0:
        return hidden.sum() * 0.0, 0
    logits = head(hidden[keep]).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, target[keep], reduction="sum"), n


def evaluate(peft_model: Any, items: Encoded, pad_id: int, device: str, batch_size: int = 8) -> float | None:
    """Token-weighted mean cross-entropy on ``items`` (None when empty)."""
    import torch

    if not items:
        return None
    was_training = peft_model.training
    peft_model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    with torch.no_grad():
        for k in range(0, len(order), batch_size):
            loss, n = label_loss(peft_model, *collate(items, order[k : k + batch_size], pad_id, device))
            total += float(loss)
            count += n
    if was_training:
        peft_model.train()
    return total / count if count else None


# -- checkpoints ------------------------------------------------------------------------------


def _pack(tensors: dict[str, Any], meta: dict[str, Any]) -> bytes:
    from safetensors.torch import save

    return save(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata={"state": json.dumps(meta)}
    )


def _unpack(blob: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors.torch import load

    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    return load(blob), json.loads(header["__metadata__"]["state"])


def make_checkpoint(peft_model: Any, optimizer: Any, meta: dict[str, Any]) -> bytes:
    """LoRA weights + AdamW moments + RNG state as safetensors bytes (meta as JSON metadata)."""
    import torch
    from peft import get_peft_model_state_dict

    tensors = {
        f"lora.{k}": v for k, v in get_peft_model_state_dict(peft_model, save_embedding_layers=False).items()
    }
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    tensors["rng.torch"] = torch.get_rng_state()
    groups = [{k: v for k, v in g.items()} for g in opt["param_groups"]]
    return _pack(tensors, {**meta, "param_groups": groups})


def restore_checkpoint(peft_model: Any, optimizer: Any, blob: bytes) -> dict[str, Any]:
    """Load a :func:`make_checkpoint` blob into model and optimizer; returns its meta."""
    import torch
    from peft import set_peft_model_state_dict

    tensors, meta = _unpack(blob)
    lora = {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")}
    set_peft_model_state_dict(peft_model, lora)
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    torch.set_rng_state(tensors["rng.torch"])
    return meta


# -- the loop ---------------------------------------------------------------------------------


def _progress(enabled: bool, total: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


class _GracefulStop:
    """First SIGINT asks the loop to stop after the current step; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._prev: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._prev is not None:
            signal.signal(signal.SIGINT, self._prev)


def train_lora(
    peft_model: Any,
    train: Encoded,
    evalset: Encoded,
    cfg: TrainConfig,
    *,
    pad_id: int,
    device: str = "cpu",
    save: Callable[[bytes], None] | None = None,
    resume_blob: bytes | None = None,
    fingerprint: dict[str, Any] | None = None,
    checkpoint_every: int = 25,
    checkpoint_seconds: float = 120.0,
    progress: bool = True,
) -> TrainResult:
    """Train the LoRA parameters of ``peft_model`` in place; checkpoint through ``save``.

    ``fingerprint`` (data, base, hyperparameters) is stored in each checkpoint; a resume whose
    fingerprint differs is refused, so a checkpoint never continues a different run.
    """
    import torch
    from peft import get_peft_model_state_dict

    if not train:
        raise UsageError("no training examples left after the eval split and truncation")
    steps = schedule([len(x[0]) for x in train], cfg)
    total = len(steps)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    fingerprint = fingerprint or {}
    start, curve, tokens, seconds, eval_before = 0, [], 0, 0.0, None
    if resume_blob is not None:
        meta = restore_checkpoint(peft_model, optimizer, resume_blob)
        if meta.get("fingerprint") != json.loads(json.dumps(fingerprint)):
            raise UsageError.naming(
                "the saved checkpoint was made with other data, base or settings; "
                "rerun with the same options, or use {restart} to discard it",
                "restart",
            )
        start, curve, tokens = meta["step"], meta["loss_curve"], meta["tokens"]
        seconds, eval_before = meta["train_seconds"], meta["eval_loss_before"]
    else:
        torch.manual_seed(cfg.seed)
        eval_before = evaluate(peft_model, evalset, pad_id, device)

    def checkpoint(step: int) -> None:
        if save is not None:
            save(
                make_checkpoint(
                    peft_model,
                    optimizer,
                    {
                        "step": step,
                        "loss_curve": curve,
                        "tokens": tokens,
                        "train_seconds": seconds,
                        "eval_loss_before": eval_before,
                        "fingerprint": fingerprint,
                    },
                )
            )

    peft_model.train()
    step, last_saved, last_save_t = start, start, time.monotonic()
    bar = _progress(progress, total)
    stop = _GracefulStop()
    try:
        with bar, stop:
            task = bar.add_task("train", total=total, completed=start, loss="-", tps="-")
            for step in range(start, total):
                if stop.requested:  # first Ctrl-C: stop at a step boundary, so the checkpoint is exact
                    raise KeyboardInterrupt
                t0 = time.perf_counter()
                for g in optimizer.param_groups:
                    g["lr"] = lr_at(step, total, cfg)
                ids, att, lab = collate(train, steps[step], pad_id, device)
                loss_sum, n = label_loss(peft_model, ids, att, lab)
                loss = loss_sum / max(n, 1)
                value = float(loss.detach())
                if not math.isfinite(value):  # before the update, so the checkpoint stays usable
                    raise OfflineError.naming(
                        "training diverged at step {step} (loss {loss}); lower {lr}",
                        "lr",
                        step=step + 1,
                        loss=value,
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                seconds += time.perf_counter() - t0
                tokens += int(att.sum())
                curve.append([step + 1, round(value, 5)])
                bar.update(
                    task,
                    completed=step + 1,
                    loss=f"{value:.4f}",
                    tps=f"{tokens / seconds:.0f}" if seconds else "-",
                )
                now = time.monotonic()
                if (step + 1) % checkpoint_every == 0 or now - last_save_t > checkpoint_seconds:
                    checkpoint(step + 1)
                    last_saved, last_save_t = step + 1, now
    except KeyboardInterrupt:
        done = len(curve) and curve[-1][0] or start
        if done > last_saved:
            checkpoint(done)
        raise TrainingInterrupted.naming(
            "interrupted at step {done}/{total}; checkpoint kept: run the same command with {resume}",
            "resume",
            done=done,
            total=total,
        ) from None
    except BaseException:
        done = len(curve) and curve[-1][0] or start
        if done > last_saved:
            checkpoint(done)
        raise
    eval_after = evaluate(peft_model, evalset, pad_id, device)
    state = {
        k: v.detach().cpu().clone()
        for k, v in get_peft_model_state_dict(peft_model, save_embedding_layers=False).items()
    }
    return TrainResult(state, curve, eval_before, eval_after, total, tokens, seconds, resumed_from=start)
