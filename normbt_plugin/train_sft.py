"""OpenRLHF's SFT stage (``openrlhf.cli.train_sft``) with the plugin's patches (CPU, no flash-attn).

    deepspeed --module normbt_plugin.train_sft <any openrlhf.cli.train_sft flag>
    python -m normbt_plugin.train_sft ...           # one process

Used by the tiny chain to give the policy a short SFT on the task before PPO.
"""

from __future__ import annotations

import runpy
import sys

from normbt_plugin.train_rm import single_process_env


def main() -> None:
    single_process_env()
    from normbt_plugin.patches import UnsupportedOpenRLHFError, apply_openrlhf_patches

    try:
        apply_openrlhf_patches()
    except UnsupportedOpenRLHFError as exc:
        sys.exit(f"normbt-plugin: {exc}")
    runpy.run_module("openrlhf.cli.train_sft", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
