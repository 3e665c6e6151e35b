"""OpenRLHF's SFT stage (``openrlhf.cli.train_sft``) with the plugin's patches (CPU, no flash-attn).

    deepspeed --module normbt_plugin.train_sft <any openrlhf.cli.train_sft flag>
    python -m normbt_plugin.train_sft ...           # one process

Used by the tiny chain to give the policy a short SFT on the task before PPO.
"""

from __future__ import annotations

from normbt_plugin.launchers.launch import run_openrlhf_cli, single_process_env


def main() -> None:
    from normbt_plugin.patches import sft_parser

    single_process_env()
    run_openrlhf_cli("openrlhf.cli.train_sft", parser=sft_parser)


if __name__ == "__main__":
    main()
