"""Add the registered losses' options to ``openrlhf.cli.train_rm``'s own argument parser.

Why: the parser is built inline under ``if __name__ == "__main__"`` and argparse rejects unknown
flags, so ``--normbt.beta 0.9`` cannot be passed to the stock CLI. While the launcher runs that
module, the first parser that owns ``--model.loss_type`` gets one argument group per registered
loss with options (``--<loss>.<option>``) and a ``--plugin.*`` group, all shown by ``--help``;
an unknown ``--model.loss_type`` is rejected by the parser with the registered names.
Upstreamable as: ``add_argument`` calls contributed by registered losses.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import warnings
from collections.abc import Callable, Iterator

from normbt_plugin.common.device_mode import cpu_job
from normbt_plugin.losses import add_loss_arguments, available_losses, loss_options_from_args, loss_spec
from normbt_plugin.options import (
    PLUGIN_PREFIX,
    PpoPluginOptions,
    RmPluginOptions,
    add_options,
    from_args,
)
from normbt_plugin.patches.openrlhf_0_11_2 import is_patched, mark_patched

LOSS_FLAG = "--model.loss_type"  # the parser of train_rm
PPO_FLAG = "--actor.model_name_or_path"  # the parser of train_ppo_ray


def add_plugin_arguments(parser: argparse.ArgumentParser) -> None:
    """``--<loss>.<option>`` for every registered loss with options, and ``--plugin.*``."""
    loss_action = parser._option_string_actions[LOSS_FLAG]
    loss_action.help = f"reward-model loss from normbt_plugin's registry: {', '.join(available_losses())}"
    add_options(parser.add_argument_group("normbt-plugin"), RmPluginOptions, prefix=PLUGIN_PREFIX)
    add_loss_arguments(parser)


def add_ppo_plugin_arguments(parser: argparse.ArgumentParser) -> None:
    """``--plugin.*`` for train_ppo_ray."""
    add_options(parser.add_argument_group("normbt-plugin"), PpoPluginOptions, prefix=PLUGIN_PREFIX)


def apply_ppo_plugin_arguments(parsed: argparse.Namespace) -> None:
    """The PPO flags reach the Ray workers as the environment the launcher gives them."""
    from normbt_plugin.patches.openrlhf_0_11_2 import rollout_log

    flags: PpoPluginOptions = from_args(PpoPluginOptions, parsed, PLUGIN_PREFIX)
    if flags.rollout_log:
        os.environ[rollout_log.ENV] = os.path.abspath(flags.rollout_log)


def check_plugin_arguments(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> None:
    """Refuse, before anything starts, what the plugin cannot do."""
    try:
        spec = loss_spec(getattr(parsed, "model.loss_type"))
    except KeyError as exc:
        parser.error(f"argument {LOSS_FLAG}: {exc.args[0]}")
    try:  # the loss's options (and its base's) checked now, before a model is loaded
        loss_options_from_args(spec, parsed)
    except (ValueError, TypeError, KeyError) as exc:
        parser.error(f"--{spec.name}.* options: {exc.args[0] if isinstance(exc, KeyError) else exc}")
    if getattr(parsed, "ds.ring_attn_size", 1) > 1:
        parser.error(
            "argument --ds.ring_attn_size: normbt-plugin does not support ring attention: it "
            "splits each sequence across ranks, so no rank holds the last-token hidden state "
            "the losses and the distance-bin eval read. Use --ds.ring_attn_size 1."
        )


@contextlib.contextmanager
def hooked_parse_args(
    before: Callable[[argparse.ArgumentParser], None] | None = None,
    after: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None,
) -> Iterator[None]:
    """While active, every ``parse_args`` calls ``before(parser)`` and ``after(parser, parsed)``:
    how the launchers reach parsers that OpenRLHF's CLIs build inline under ``__main__``."""
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        if before is not None:
            before(self)
        parsed = original(self, args, namespace)
        if after is not None:
            after(self, parsed)
        return parsed

    argparse.ArgumentParser.parse_args = parse_args
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def _add_once(parser: argparse.ArgumentParser) -> None:
    cpu_param_dtype(parser)
    if is_patched(parser, "cli_options"):
        return
    if LOSS_FLAG in parser._option_string_actions:
        mark_patched(parser, "cli_options")
        add_plugin_arguments(parser)
    elif PPO_FLAG in parser._option_string_actions:
        mark_patched(parser, "cli_options")
        add_ppo_plugin_arguments(parser)


def _check(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> None:
    warn_slow_bf16(parser, parsed)
    if is_patched(parser, "cli_options") and LOSS_FLAG in parser._option_string_actions:
        check_plugin_arguments(parser, parsed)
        from normbt_plugin.patches.openrlhf_0_11_2 import value_head_norm

        flags: RmPluginOptions = from_args(RmPluginOptions, parsed, PLUGIN_PREFIX)
        value_head_norm.request_layernorm(flags.value_head_layernorm)


def extended_parser() -> contextlib.AbstractContextManager[None]:
    """While active, parsers owning ``--model.loss_type`` take and check the plugin's flags."""
    return hooked_parse_args(before=_add_once, after=_check)


def ppo_parser(
    after: Callable[[argparse.ArgumentParser, argparse.Namespace], None],
) -> contextlib.AbstractContextManager[None]:
    """While active, train_ppo_ray's parser takes the ``--plugin.*`` PPO flags and fp32 on CPU;
    ``after`` runs on what it parsed (the launcher's checks), once the flags are in effect."""

    def checked(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> None:
        warn_slow_bf16(parser, parsed)
        if is_patched(parser, "cli_options") and PPO_FLAG in parser._option_string_actions:
            apply_ppo_plugin_arguments(parsed)
        after(parser, parsed)

    return hooked_parse_args(before=_add_once, after=checked)


def cpu_param_dtype(parser: argparse.ArgumentParser) -> None:
    """Without a GPU, ``--ds.param_dtype`` also takes fp32 and defaults to it (patch ``cpu_fp32``)."""

    from normbt_plugin.common.environment import CPU_PARAM_DTYPE

    dtype = parser._option_string_actions.get("--ds.param_dtype")
    if dtype is None or not cpu_job() or is_patched(dtype, "cpu_fp32"):
        return
    mark_patched(dtype, "cpu_fp32")
    if CPU_PARAM_DTYPE not in dtype.choices:
        dtype.choices = [*dtype.choices, CPU_PARAM_DTYPE]
    dtype.default = CPU_PARAM_DTYPE
    dtype.help = f"{dtype.help or ''} (no GPU here: default {CPU_PARAM_DTYPE})"


def warn_slow_bf16(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> None:
    """An explicit bf16 on a CPU that only emulates it: say what it costs."""

    from normbt_plugin.common.environment import CPU_PARAM_DTYPE, cpu_summary, native_bf16

    if cpu_job() and getattr(parsed, "ds.param_dtype", None) == "bf16" and not native_bf16():
        warnings.warn(
            f"--ds.param_dtype bf16 without a GPU on a CPU with {cpu_summary()}: bf16 matmuls run "
            f"about 75x slower than float32 here; use --ds.param_dtype {CPU_PARAM_DTYPE} (the CPU default)",
            stacklevel=2,
        )


def cpu_dtype_parser() -> contextlib.AbstractContextManager[None]:
    """While active, parsers owning ``--ds.param_dtype`` take fp32 (and default to it) on CPU."""
    return hooked_parse_args(before=cpu_param_dtype, after=warn_slow_bf16)


def needed() -> bool:
    return True


def apply() -> None:
    """Nothing to apply globally: the launcher runs the CLI inside ``extended_parser()``."""


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def capture_parser(module: str) -> argparse.ArgumentParser:
    """The argument parser an OpenRLHF CLI module builds under ``__main__``, without running it.

    For ``openrlhf.cli.train_rm`` it carries the plugin's flags, as under the launcher; for
    every CLI ``--ds.param_dtype`` takes (and defaults to) fp32 where there is no GPU, as under
    the launchers.
    """
    import runpy
    import sys

    def capture(parser: argparse.ArgumentParser) -> None:
        _add_once(parser)
        raise _Captured(parser)

    argv = sys.argv
    try:
        sys.argv = [module]
        with hooked_parse_args(before=capture):
            runpy.run_module(module, run_name="__main__")
    except _Captured as captured:
        return captured.parser
    finally:
        sys.argv = argv
    raise RuntimeError(f"{module} did not build an argument parser")
