"""Never resume from a half-written checkpoint, and never delete the last whole one before the next.

Why: DeepSpeed 0.19.6's ``save_checkpoint`` has rank 0 write ``latest`` as soon as rank 0's own
files are written, before the barrier that waits for the other ranks' ZeRO shards: a rank killed
during the save leaves ``latest`` naming a checkpoint with a missing or truncated shard, and
``--ckpt.load_enable`` then fails inside ``torch.load`` (or loads a torn optimizer state).
OpenRLHF's ``save_ckpt`` also rotates *before* saving, so ``--ckpt.max_num 1`` deletes the only
whole checkpoint before the new one exists.
What changes (DeepspeedStrategy, every stage): after DeepSpeed's closing barrier (every rank's
files are on disk) each node's local rank 0 marks the tag complete (``normbt_complete.json``,
written atomically); rotation keeps one extra checkpoint during the save and trims after it.
``load_ckpt`` without a tag loads ``latest`` only when it is marked complete; otherwise the newest
complete one, saying which checkpoint was skipped; with none complete it stops and says what to
remove. Checkpoints with no mark at all (saved without the plugin) load unchecked, with a warning.
Upstreamable as: DeepSpeed writing ``latest`` after the barrier; OpenRLHF rotating after the save.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
from pathlib import Path

from normbt_plugin.patches.openrlhf_0_11_2 import is_patched, mark_patched

COMPLETE = "normbt_complete.json"  # in a checkpoint: every rank's files are written


def saving_mark(root: Path, tag: str) -> Path:
    """Beside the checkpoints, while ``tag`` is being written (a file: rotation counts folders)."""
    return root / f".normbt_saving_{tag}"


class IncompleteCheckpointError(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"normbt-plugin: {message}")


def needed() -> bool:
    return True


def _step(tag: str) -> int:
    found = re.search(r"(\d+)$", tag)
    return int(found.group(1)) if found else -1


def is_complete(ckpt_dir: Path) -> bool:
    return (ckpt_dir / COMPLETE).is_file()


def choose_tag(load_dir: str | os.PathLike) -> tuple[str | None, str | None]:
    """(tag to load, message) for ``load_dir``: ``latest`` if complete, else the newest complete
    checkpoint. (None, None) without ``latest``: DeepSpeed then finds nothing and starts fresh."""
    root = Path(load_dir)
    latest_file = root / "latest"
    if not latest_file.is_file():
        return None, None
    latest = latest_file.read_text().strip()
    if not (root / latest).is_dir():
        raise IncompleteCheckpointError(
            f"{latest_file} names {latest}, which is not in {root}: point --ckpt.path at the "
            f"checkpoints to resume, or remove {latest_file} to start fresh"
        )
    if is_complete(root / latest):
        return latest, None
    if not saving_mark(root, latest).exists():
        return latest, f"normbt-plugin: warning: {root / latest} has no plugin marks: loaded unchecked"
    complete = sorted((d.name for d in root.iterdir() if d.is_dir() and is_complete(d)), key=_step)
    if not complete:
        raise IncompleteCheckpointError(
            f"{root / latest} was not completely written (a rank stopped during its save) and "
            f"{root} holds no complete checkpoint: remove {root / latest} and {latest_file} to "
            "start this run fresh"
        )
    return complete[-1], (
        f"normbt-plugin: {root / latest} was not completely written (a rank stopped during its "
        f"save): resuming from {root / complete[-1]}, the newest complete checkpoint"
    )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def apply() -> None:
    module = importlib.import_module("openrlhf.utils.deepspeed.deepspeed")
    strategy_cls = module.DeepspeedStrategy
    if is_patched(strategy_cls.save_ckpt, "checkpoint_guard"):
        return
    save_ckpt, load_ckpt = strategy_cls.save_ckpt, strategy_cls.load_ckpt

    def guarded_save(self, model, save_dir, tag=None, max_num=3, max_mem=1000, client_state=None, **kw):
        root = Path(save_dir)
        tag = tag or f"global_step{model.global_steps}"  # DeepSpeed's own default tag
        node_leader = int(os.environ.get("LOCAL_RANK", "0")) == 0  # one writer per filesystem
        if node_leader:
            root.mkdir(parents=True, exist_ok=True)
            _write_atomic(saving_mark(root, tag), tag)
            (root / tag / COMPLETE).unlink(missing_ok=True)  # a tag saved again
        # upstream rotates before saving: one more slot keeps the newest whole checkpoint meanwhile
        save_ckpt(self, model, save_dir, tag, max_num + 1, max_mem, client_state, **kw)
        # DeepSpeed's save ends in a barrier: every rank's files are written
        if node_leader:
            _write_atomic(root / tag / COMPLETE, json.dumps({"world_size": self.world_size}))
            saving_mark(root, tag).unlink(missing_ok=True)
        if self.is_rank_0():
            _trim(self, root, keep=tag, max_num=max_num)

    def guarded_load(self, model, load_dir, tag=None, *args, **kwargs):
        if tag is None:
            tag, message = choose_tag(load_dir)
            if message:
                self.print(message)
        return load_ckpt(self, model, load_dir, tag, *args, **kwargs)

    strategy_cls.save_ckpt = mark_patched(guarded_save, "checkpoint_guard")
    strategy_cls.load_ckpt = mark_patched(guarded_load, "checkpoint_guard")


def _trim(strategy, root: Path, keep: str, max_num: int) -> None:
    """Upstream's eviction order (half-written first, then no metric, worst metric, oldest), after
    the save: at most ``max_num`` regular (not ``best*``) folders, never ``keep``."""
    regular = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith("best")]
    while len(regular) > max_num:
        metric = {d: strategy._read_ckpt_metric(str(d)) for d in regular}
        candidates = sorted(
            (d for d in regular if d.name != keep),
            key=lambda d: (
                is_complete(d),
                metric[d] is not None,
                metric[d] or float("-inf"),
                d.stat().st_mtime,
            ),
        )
        if not candidates:
            return
        shutil.rmtree(candidates[0], ignore_errors=True)
        strategy.print(f"Deleted checkpoint {candidates[0]} (after saving {keep})")
        regular.remove(candidates[0])
