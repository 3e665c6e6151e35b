"""OpenRLHF's reward-model stage with normbt-plugin's losses.

    deepspeed --module normbt_plugin.train_rm <any openrlhf.cli.train_rm flag> \\
        --model.loss_type normbt --normbt.beta 0.9
    python -m normbt_plugin.train_rm ...            # one process

Runs the stock ``openrlhf.cli.train_rm`` (its parser, its ``train()``) after applying the
patches for the installed OpenRLHF in this process; every DeepSpeed rank runs this module.
"""

from __future__ import annotations

from normbt_plugin.launchers.launch import run_openrlhf_cli, single_process_env


def main() -> None:
    single_process_env()
    from normbt_plugin.patches import rm_parser

    run_openrlhf_cli("openrlhf.cli.train_rm", parser=rm_parser)


if __name__ == "__main__":
    main()
