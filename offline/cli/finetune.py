"""``offline finetune create|list|show|rm``: LoRA adapters trained on-prem, stored encrypted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .app import App, table
from .params import SEED, TEXT, Count, FsPath, Number


@click.group()
def finetune() -> None:
    """Train LoRA adapters on your data and keep them encrypted in the vault."""


def _created_text(d: dict[str, Any]) -> str:
    m = d.get("meta", {})
    before, after = d.get("eval_loss_before"), d.get("eval_loss_after")
    ev = (
        f"eval loss {before:.4f} -> {after:.4f}"
        if before is not None and after is not None
        else "no eval split"
    )
    return (
        f"Created adapter {d['name']} (id {d['id']}) on {d['base_model']}: {m.get('steps')} steps, "
        f"{m.get('tokens_per_s')} tok/s, {ev}; sha256 {d['sha256'][:16]}..."
    )


@finetune.command("create")
@click.argument("name")
@click.option(
    "--data",
    "data",
    type=FsPath(path_type=Path),
    help="Q/A file (the formats `compare --qa` reads): "
    'JSONL of {"messages": [...]}, {"prompt", "completion"} or {"question", "answers"}, or SQuAD JSON.',
)
@click.option(
    "--from-collection", "from_collection", type=TEXT, help="Continued training on a collection's text."
)
@click.option(
    "--raft",
    is_flag=True,
    help="Retrieval-augmented: train on the prompts `ask` builds for --qa "
    "questions, context retrieved from -c COLLECTION (gold among distractors, sometimes absent).",
)
@click.option(
    "--qa",
    "qa",
    type=FsPath(path_type=Path),
    help="--raft: Q/A file, any format --data takes (a question with no answers teaches the refusal).",
)
@click.option("-c", "--collection", "collection", type=TEXT, help="--raft: the collection to retrieve from.")
@click.option("-k", "k", type=Count(1, 20), default=3, show_default=True, help="--raft: passages per prompt.")
@click.option(
    "--base", help="Base model: a registered generate model (default: the kit's default) or a .gguf path."
)
@click.option("--rank", type=Count(1, 1024), default=8, show_default=True, help="LoRA rank r.")
@click.option(
    "--alpha",
    type=Number(0, 1e4, min_open=True),
    default=16.0,
    show_default=True,
    help="LoRA alpha (scale = alpha / r).",
)
@click.option("--epochs", type=Count(1, 10_000), default=1, show_default=True)
@click.option(
    "--lr",
    type=Number(0, 1, min_open=True, max_open=True),
    default=2e-4,
    show_default=True,
    help="Peak learning rate (AdamW).",
)
@click.option(
    "--max-steps",
    type=Count(1, 10_000_000),
    default=None,
    help="Train exactly this many optimizer steps (overrides --epochs).",
)
@click.option("--batch-size", type=Count(1, 4096), default=4, show_default=True)
@click.option(
    "--max-len",
    type=Count(8, 131_072),
    default=512,
    show_default=True,
    help="Truncate examples to this many tokens.",
)
@click.option(
    "--eval-split",
    type=Number(0, 1, max_open=True),
    default=0.1,
    show_default=True,
    help="Held-out share for eval loss.",
)
@click.option(
    "--targets",
    default="q_proj,k_proj,v_proj,o_proj",
    show_default=True,
    help="Comma-separated module names, or 'all' (attention + MLP projections).",
)
@click.option("--dropout", type=Number(0, 1, max_open=True), default=0.05, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when present).")
@click.option(
    "--dtype",
    type=click.Choice(["f32", "f16"]),
    default="f32",
    show_default=True,
    help="Tensor type of the exported GGUF adapter.",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint.")
@click.option("--restart", is_flag=True, help="Discard an interrupted run's checkpoint and start over.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.pass_obj
def create(
    app: App,
    name: str,
    data: Path | None,
    from_collection: str | None,
    raft: bool,
    qa: Path | None,
    collection: str | None,
    k: int,
    base: str | None,
    rank: int,
    alpha: float,
    epochs: int,
    lr: float,
    max_steps: int | None,
    batch_size: int,
    max_len: int,
    eval_split: float,
    targets: str,
    dropout: float,
    seed: int,
    device: str | None,
    dtype: str,
    resume: bool,
    restart: bool,
    no_progress: bool,
) -> None:
    """Train adapter NAME from --data FILE, --from-collection C or --raft --qa FILE -c C; store it
    encrypted."""
    from ..errors import UsageError
    from ..finetune.base import DEFAULT_TARGETS, MLP_TARGETS
    from ..finetune.pipeline import create_adapter
    from ..finetune.train import TrainConfig

    names = (
        [*DEFAULT_TARGETS, *MLP_TARGETS]
        if targets.strip() == "all"
        else [t.strip() for t in targets.split(",") if t.strip()]
    )
    cfg = TrainConfig(
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        targets=names,
        epochs=epochs,
        lr=lr,
        max_steps=max_steps,
        batch_size=batch_size,
        max_len=max_len,
        eval_split=eval_split,
        seed=seed,
    )
    if raft != (qa is not None) or (collection is not None and not raft):
        raise UsageError("--raft goes with --qa FILE and -c COLLECTION")
    info = create_adapter(
        app.session(),
        name,
        data=data,
        from_collection=from_collection,
        base=base,
        cfg=cfg,
        raft_qa=qa,
        raft_collection=collection if raft else None,
        raft_k=k,
        resume=resume,
        restart=restart,
        device=device,
        dtype=dtype,
        progress=not no_progress and not app.as_json,
    )
    app.emit(info, _created_text)


@finetune.command("list")
@click.pass_obj
def list_cmd(app: App) -> None:
    """Adapters you may use (admins see all)."""
    from ..finetune.store import list_adapters

    rows = list_adapters(app.session())

    def text(rs: list[dict[str, Any]]) -> str:
        view = [
            {
                "name": r["name"],
                "base": r["base_model"],
                "created_by": r["created_by"],
                "created_at": r["created_at"],
                "eval_after": "" if r["eval_loss_after"] is None else f"{r['eval_loss_after']:.4f}",
                "status": "tainted" if r["tainted"] else "ok",
            }
            for r in rs
        ]
        return table(view, ["name", "base", "created_by", "created_at", "eval_after", "status"])

    app.emit(rows, text)


@finetune.command("show")
@click.argument("name")
@click.pass_obj
def show(app: App, name: str) -> None:
    """Lineage, hyperparameters and loss figures of adapter NAME."""
    from ..finetune.store import show_adapter

    info = show_adapter(app.session(), name)

    def text(d: dict[str, Any]) -> str:
        keys = [
            "name",
            "id",
            "base_model",
            "base_sha256",
            "base_arch",
            "dataset_sha256",
            "source_doc_ids",
            "adapter_sha256",
            "size",
            "created_by",
            "created_at",
            "eval_loss_before",
            "eval_loss_after",
            "hyperparameters",
            "meta",
            "tainted_at",
            "taint_reason",
            "override_reason",
        ]
        lines = [f"{k}: {d[k]}" for k in keys if d.get(k) is not None]
        curve = d.get("loss_curve") or []
        if curve:
            lines.append(f"loss_curve: {len(curve)} steps, first {curve[0][1]}, last {curve[-1][1]}")
        return "\n".join(lines)

    app.emit(info, text)


@finetune.command("rm")
@click.argument("name")
@click.pass_obj
def rm(app: App, name: str) -> None:
    """Delete adapter NAME (admin or its creator)."""
    from ..finetune.store import remove_adapter

    app.emit(remove_adapter(app.session(), name), lambda d: f"Removed adapter {d['name']}.")


@finetune.command("share")
@click.argument("name")
@click.argument("user")
@click.pass_obj
def share(app: App, name: str, user: str) -> None:
    """Let USER use adapter NAME (its creator or an admin who holds it; a signed key wrap)."""
    from ..finetune.store import share_adapter

    app.emit(
        share_adapter(app.session(), name, user), lambda d: f"Shared adapter {d['adapter']} with {d['user']}."
    )


@finetune.command("override-taint")
@click.argument("name")
@click.option("--reason", required=True, help="Why serving the tainted adapter is justified (audited, high).")
@click.pass_obj
def override_taint_cmd(app: App, name: str, reason: str) -> None:
    """Allow tainted adapter NAME to be served anyway (admin; audited at high severity)."""
    from ..finetune.store import override_taint

    override_taint(app.session(), name, reason)
    app.emit(
        {"adapter": name, "override_reason": reason},
        lambda d: f"Override recorded for adapter {d['adapter']}.",
    )


@click.group()
def adapters() -> None:
    """Adapter housekeeping an admin does (the adapters themselves: `offline finetune`)."""


adapters.add_command(override_taint_cmd)

commands = [finetune, adapters]
