"""Give OpenRLHF 0.11.2's reward-model trainer a registered loss that sees hidden states.

Why: ``RewardModelTrainer`` picks ``PairWiseLoss`` for "sigmoid" and silently ``LogExpLoss`` for
any other name, calls it as ``loss_fn(chosen, reject, margin)``, and drops the model's
``last_hidden_state`` inside ``concatenated_forward``. NormBT needs the hidden state the value
head reads (at the reward's EOS index), its EMA must be checkpointed, and its metrics logged.
This subclass changes exactly that and nothing else of the training loop:
- ``concatenated_forward`` keeps the EOS rows ``[2B, H]`` of the hidden states (never the
  ``[2B, L, H]`` tensor), for padded and packed batches;
- ``loss_fn`` is an adapter ``(chosen, reject, margin) -> loss`` over the registered loss;
- ``save_logs_and_checkpoints`` adds the loss metrics (reduced over ranks) to the step logs and
  the loss state to DeepSpeed's ``client_state``; ``load_ckpt`` hands it back on resume;
- ``evaluate`` adds accuracy by representation-distance quantile bin.
Upstreamable as: a loss registry in ``openrlhf.models.loss`` and ``return_output`` hidden states.
"""

from __future__ import annotations

import inspect
import time
from collections import defaultdict
from typing import Any

import torch
import torch.distributed as dist
from openrlhf.trainer import rm_trainer
from openrlhf.utils.deepspeed import deepspeed as ds_strategy

from normbt_plugin.hidden import active_dropout, disable_dropout, eos_hidden_states
from normbt_plugin.losses import PreferenceLoss, host_metrics, loss_options_from_args, loss_spec
from normbt_plugin.patches.openrlhf_0_11_2 import is_patched, mark_patched
from normbt_plugin.patches.openrlhf_0_11_2.value_head_norm import normed_head
from normbt_plugin.rank_metrics import format_bins, gather_distance_bins, reduce_metrics
from normbt_plugin.runs.rm import RunMeta, RunRecorder
from normbt_plugin.stats import DistanceBin, pair_distance

CLIENT_STATE_KEY = "normbt_plugin_loss"
_UpstreamTrainer = rm_trainer.RewardModelTrainer


def needed() -> bool:
    return True


def build_loss_from_args(args: Any, process_group: Any = None) -> tuple[str, PreferenceLoss]:
    """The loss named by ``--model.loss_type`` with its ``--<name>.<option>`` flags."""
    spec = loss_spec(args.model.loss_type)
    options = loss_options_from_args(spec, args)
    if "process_group" in inspect.signature(spec.factory).parameters:
        options["process_group"] = process_group
    return spec.name, spec.factory(**options)


class _LossAdapter:
    """OpenRLHF's ``loss_fn(chosen, reject, margin)`` over a registered loss."""

    def __init__(self, trainer: PluginRewardModelTrainer) -> None:
        self.trainer = trainer

    def __call__(self, chosen_reward, reject_reward, margin=None) -> torch.Tensor:
        t = self.trainer
        training = t.in_training()
        chosen_hidden, reject_hidden = t._hidden
        t._hidden = (None, None)
        loss = t.plugin_loss.train(training)
        value, metrics = loss(chosen_reward, reject_reward, chosen_hidden, reject_hidden, margin)
        if training:
            for key, val in metrics.items():
                t._metric_values[key].append(val)
        elif chosen_hidden is not None:
            t._eval_pairs.append(
                (
                    pair_distance(chosen_hidden, reject_hidden).cpu(),
                    (chosen_reward > reject_reward).cpu(),
                )
            )
        return value


class PluginRewardModelTrainer(_UpstreamTrainer):
    """OpenRLHF's RewardModelTrainer with the loss taken from normbt_plugin's registry."""

    def __init__(self, *args, loss: str = "sigmoid", **kwargs) -> None:
        super().__init__(*args, loss=loss, **kwargs)
        strategy = self.strategy  # ring attention is refused by the parser (cli_options)
        dp_group = strategy.ds_device_mesh["dp"].get_group() if dist.is_initialized() else None
        self.loss_name, self.plugin_loss = build_loss_from_args(self.args, dp_group)
        self.plugin_loss.step_by_optimizer()  # end_step() in save_logs_and_checkpoints
        self._last_log = time.perf_counter()
        if self.plugin_loss.uses_margin and not self.margin_loss:
            raise SystemExit(
                f"normbt-plugin: loss {self.loss_name!r} uses a margin per pair: pass "
                "--model.margin_loss_enable and give the data a 'margin' column."
            )
        self.loss_fn = _LossAdapter(self)
        self._hidden: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        self._normed_head = normed_head(self.model)  # --plugin.value_head_layernorm
        self._check_dropout()
        self._metric_values: dict[str, list[float]] = defaultdict(list)
        self._eval_pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.eval_distance_bins = self.args.plugin.eval_distance_bins

        loaded = getattr(strategy, "normbt_loaded_client_state", None)
        if loaded is not None:
            state = loaded.get(CLIENT_STATE_KEY)
            if state is None:
                strategy.print("normbt-plugin: checkpoint holds no loss state; loss starts fresh")
            elif state["name"] != self.loss_name:
                raise SystemExit(
                    f"normbt-plugin: the checkpoint was trained with loss {state['name']!r}, "
                    f"this run asks for {self.loss_name!r}: resume with the same "
                    "--model.loss_type or start a new --ckpt.path."
                )
            else:
                self.plugin_loss.load_state_dict(state["state"])
                strategy.print(f"normbt-plugin: restored {self.loss_name} state {state['state']}")
        strategy.print(f"normbt-plugin: loss {self.loss_name} ({type(self.plugin_loss).__name__})")
        self.recorder = RunRecorder(self.args.plugin.metrics_dir, strategy.get_rank())
        self.run_meta = self._run_meta()
        self.recorder.meta(self.run_meta)

    def _check_dropout(self) -> None:
        """``--plugin.disable_dropout``, or a warning where a distance-using loss meets dropout."""
        module = self.strategy._unwrap_model(self.model)
        if self.args.plugin.disable_dropout:
            n = disable_dropout(module)
            self.strategy.print(f"normbt-plugin: dropout off ({n} dropout rates were > 0)")
        elif self.plugin_loss.needs_hidden and (rates := active_dropout(module)):
            self.strategy.print(
                f"normbt-plugin: WARNING: the model trains with dropout ({len(rates)} rates > 0, "
                f"max {max(rates.values())}): the chosen-rejected distance {self.loss_name} reads "
                "then includes dropout noise, which can swamp the distance of close pairs "
                "(docs/losses.md, --plugin.disable_dropout). Pass --plugin.disable_dropout to train "
                "without it."
            )

    def _run_meta(self) -> RunMeta:
        """Which loss, options and seed made this run (``normbt compare`` reads it)."""
        options = getattr(self.args, self.loss_name, None)
        module = self.strategy._unwrap_model(self.model)
        return RunMeta(
            loss=self.loss_name,
            seed=self.args.train.seed,
            label=self.args.plugin.label or self.loss_name,
            options=vars(options) if options is not None else {},
            max_norm=self.args.max_norm,
            disable_dropout=self.args.plugin.disable_dropout,
            model=self.args.model.model_name_or_path,
            dataset=self.args.data.dataset,
            lora_tensors=sum(p.requires_grad and "lora_" in n for n, p in module.named_parameters()),
            gradient_checkpointing=checkpointing(module),
        )

    def in_training(self) -> bool:
        # DeepSpeedEngine.eval() switches its module but leaves engine.training True
        return self.strategy._unwrap_model(self.model).training

    def concatenated_forward(self, model, chosen_ids, c_mask, reject_ids, r_mask):
        # Upstream's body, keeping the EOS hidden states when the loss or evaluation reads them.
        input_ids, att_masks = self.concatenated_inputs(chosen_ids, c_mask, reject_ids, r_mask)
        all_values, output = model(
            input_ids,
            attention_mask=att_masks,
            return_output=True,
            ring_attn_group=self.strategy.ring_attn_group,
        )
        batch = chosen_ids.shape[0]
        if self.run_meta.packed_forward is None and self.in_training():  # recorded once, as it ran
            # 2B sequences in one row of concatenated tokens, not 2B padded rows
            self.run_meta.packed_forward = output["last_hidden_state"].shape[0] == 1
            self.recorder.meta(self.run_meta)
        if self.plugin_loss.needs_hidden or not self.in_training():
            hidden = eos_hidden_states(output["last_hidden_state"], att_masks, self.packing_samples)
            if self._normed_head is not None:  # the distance of what the value head reads
                hidden = self._normed_head.normalize(hidden)
            self._hidden = (hidden[:batch], hidden[batch:])
        aux_loss = output.aux_loss if "aux_loss" in output else []
        del output  # the [2B, L, H] states live no longer than under upstream's BT
        return all_values[:batch], all_values[batch:], aux_loss

    def _reduced_metrics(self) -> dict[str, float]:
        """Step metrics over the accumulated micro-batches and all ranks: mean, min, max."""
        if not self._metric_values:
            return {}
        keys = sorted(self._metric_values)
        local = host_metrics({k: self._metric_values[k] for k in keys})  # raises on NaN rewards
        self._metric_values.clear()
        return reduce_metrics(local, self.plugin_loss.state_metrics)

    def save_logs_and_checkpoints(self, args, global_step, step_bar, logs_dict=None, client_states=None):
        self.plugin_loss.end_step()  # called at every optimizer step's end, before logs, eval and saves
        logs_dict = dict(logs_dict or {})
        logs_dict.update(self._reduced_metrics())
        now = time.perf_counter()  # this rank's wall time of the step (the first: since set-up)
        logs_dict["step_seconds"], self._last_log = now - self._last_log, now
        if torch.cuda.is_available():
            logs_dict["gpu_peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        client_states = dict(client_states or {})
        client_states[CLIENT_STATE_KEY] = {
            "name": self.loss_name,
            "state": self.plugin_loss.state_dict(),
        }
        self.recorder.step(global_step, logs_dict, self.plugin_loss.state_dict())
        super().save_logs_and_checkpoints(args, global_step, step_bar, logs_dict, client_states)
        stop_after = self.args.plugin.stop_after_steps
        if stop_after and global_step >= stop_after:
            self.strategy.print(
                f"normbt-plugin: stopping after step {global_step} (--plugin.stop_after_steps); "
                "resume with --ckpt.load_enable"
            )
            raise SystemExit(0)

    def evaluate(self, eval_dataloader, steps=0):
        self._eval_pairs = []
        super().evaluate(eval_dataloader, steps)
        bins = self._distance_bin_accuracy()
        self._eval_pairs = []
        if not bins:
            return
        self.recorder.eval(steps, bins)
        for line in format_bins(bins):
            self.strategy.print(line)
        if self.strategy.is_rank_0():
            logs = {f"acc_dist_bin{i}": b.acc for i, b in enumerate(bins)}
            logs.update({f"dist_bin{i}_upper": b.hi for i, b in enumerate(bins)})
            if self._wandb is not None:
                self._wandb.log({**{f"eval/{k}": v for k, v in logs.items()}, "eval/global_step": steps})
            elif self._tensorboard is not None:
                for k, v in logs.items():
                    self._tensorboard.add_scalar(f"eval/{k}", v, steps)

    def _distance_bin_accuracy(self) -> list[DistanceBin]:
        return gather_distance_bins(self._eval_pairs, self.eval_distance_bins)


def checkpointing(module: torch.nn.Module) -> bool:
    """Whether gradient checkpointing is on in ``module`` (transformers' flag on any submodule)."""
    return any(getattr(m, "is_gradient_checkpointing", False) for m in module.modules())


def _remember_client_state(load_ckpt):
    def wrapper(self, *args, **kwargs):
        load_path, states = load_ckpt(self, *args, **kwargs)
        self.normbt_loaded_client_state = states if load_path is not None else None
        return load_path, states

    return wrapper


def apply() -> None:
    rm_trainer.RewardModelTrainer = PluginRewardModelTrainer
    strategy_cls = ds_strategy.DeepspeedStrategy
    if not is_patched(strategy_cls.load_ckpt, "registered_loss"):
        strategy_cls.load_ckpt = mark_patched(
            _remember_client_state(strategy_cls.load_ckpt), "registered_loss"
        )
