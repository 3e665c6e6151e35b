"""TRL's reward script with the plugin's losses: ``trl reward``'s arguments (TRL's ``ScriptArguments``,
``RewardConfig``, ``ModelConfig``, dataset mixtures, ``--config file.yaml``) plus ``--loss_type`` and
each loss's options (``--normbt.beta 0.9``, ``--normbt.base label_smoothing --label_smoothing.epsilon 0.2``).

    python -m normbt_plugin.trl_adapter.reward --model_name_or_path M --dataset_name D \\
        --output_dir out --loss_type normbt
    accelerate launch -m normbt_plugin.trl_adapter.reward ...   # GPUs, processes and nodes: accelerate's
    torchrun --nproc-per-node 2 -m normbt_plugin.trl_adapter.reward ...   # several CPU processes

Without a GPU, bf16 is off unless asked for (a CPU without native bf16 runs it about 75x slower), and
``--use_cpu`` is on: without it, processes started by torchrun on a machine without a GPU would each
train alone on their own share of the data (accelerate joins CPU processes only when told to use the CPU).
"""

from __future__ import annotations

import sys

from normbt_plugin.losses import add_loss_arguments, available_losses, loss_options_from_args, loss_spec


def make_parser():
    from trl import DatasetMixtureConfig, ModelConfig, RewardConfig, ScriptArguments, TrlParser

    parser = TrlParser((ScriptArguments, RewardConfig, ModelConfig, DatasetMixtureConfig))
    group = parser.add_argument_group("normbt-plugin")
    group.add_argument(
        "--loss_type",
        default="bt",
        help=f"reward-model loss from normbt_plugin's registry: {', '.join(available_losses())}",
    )
    add_loss_arguments(parser)
    return parser


def parse(argv: list[str] | None = None) -> tuple:
    """The parser and what it read from ``argv`` (default: the command line); without a GPU, float32
    unless ``--bf16``/``--fp16`` is given (TRL's default is bf16) and ``--use_cpu`` unless given."""
    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    given = {a.split("=")[0] for a in argv}
    if not torch.cuda.is_available():
        argv += [] if given & {"--bf16", "--fp16"} else ["--bf16", "false"]
        argv += [] if "--use_cpu" in given else ["--use_cpu", "true"]
    return parser, parser.parse_args_and_config(argv)


def main(argv: list[str] | None = None) -> None:
    from datasets import load_dataset
    from trl import get_dataset, get_peft_config, get_quantization_config

    from normbt_plugin.trl_adapter.trainer import PluginRewardTrainer

    parser, (script_args, training_args, model_args, dataset_args, extra) = parse(argv)
    try:
        spec = loss_spec(extra.loss_type)
        loss_options = loss_options_from_args(spec, extra)
    except (KeyError, ValueError, TypeError) as exc:
        parser.error(f"--loss_type {extra.loss_type}: {exc.args[0] if isinstance(exc, KeyError) else exc}")

    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    if dataset_args.datasets:
        dataset = get_dataset(dataset_args)
    elif script_args.dataset_name:
        dataset = load_dataset(
            script_args.dataset_name, name=script_args.dataset_config, streaming=script_args.dataset_streaming
        )
    else:
        parser.error("give --dataset_name (a dataset name or a local data folder/file) or --datasets")
    trainer = PluginRewardTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
        loss=spec.name,
        loss_options=loss_options,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"normbt-plugin: {spec.name} reward model saved to {training_args.output_dir}")


if __name__ == "__main__":
    main()
