"""Check a reward dataset's columns before OpenRLHF 0.11.2 tokenises it.

Why: ``RewardDataset`` reads ``data[chosen_key]`` inside ``datasets.map`` worker processes, so a
missing key surfaces as a KeyError deep in a multiprocessing traceback; and a missing ``margin``
column silently becomes margin 0 even with ``--model.margin_loss_enable``. This check names the
missing column, the columns present and the flag to pass, and counts chosen == rejected pairs.
Upstreamable as: the same check at the top of ``RewardDataset.__init__``.
"""

from __future__ import annotations

import importlib

from normbt_plugin.patches.openrlhf_0_11_2 import is_patched, mark_patched


def needed() -> bool:
    return True


def check_reward_columns(dataset, args) -> None:
    columns = list(dataset.column_names)
    data = args.data
    for flag, key in (
        ("--data.chosen_key", data.chosen_key),
        ("--data.rejected_key", data.rejected_key),
        ("--data.prompt_key", data.prompt_key),
    ):
        if key is not None and key not in columns:
            raise KeyError(
                f"reward dataset has no column {key!r} (set by {flag}); its columns are "
                f"{columns}. Pass {flag} <column> naming one of them."
            )
    if args.model.margin_loss_enable and "margin" not in columns:
        raise KeyError(
            f"--model.margin_loss_enable is set but the reward dataset has no 'margin' column "
            f"(columns: {columns}); OpenRLHF would silently use margin 0. Add the column or drop "
            "the flag."
        )


def count_identical_pairs(dataset, args) -> int:
    chosen, rejected = dataset[args.data.chosen_key], dataset[args.data.rejected_key]
    return sum(1 for c, r in zip(chosen, rejected, strict=True) if c == r)


def apply() -> None:
    reward_dataset = importlib.import_module("openrlhf.datasets.reward_dataset")
    upstream = reward_dataset.RewardDataset
    if is_patched(upstream, "dataset_keys"):
        return

    class CheckedRewardDataset(upstream):
        def __init__(self, dataset, tokenizer, max_length, strategy, *args, **kwargs):
            check_reward_columns(dataset, strategy.args)
            identical = count_identical_pairs(dataset, strategy.args)
            if identical:
                strategy.print(
                    f"normbt-plugin: warning: {identical} of {len(dataset)} pairs have chosen == "
                    "rejected; they carry no gradient (NormBT gives them weight 1 and leaves them "
                    "out of its mean distance)."
                )
            super().__init__(dataset, tokenizer, max_length, strategy, *args, **kwargs)

    mark_patched(CheckedRewardDataset, "dataset_keys")
    reward_dataset.RewardDataset = CheckedRewardDataset
    importlib.import_module("openrlhf.datasets").RewardDataset = CheckedRewardDataset
