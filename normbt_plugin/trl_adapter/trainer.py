"""``PluginRewardTrainer``: TRL's ``RewardTrainer`` with its loss taken from normbt_plugin's registry.

TRL 1.16 writes its loss inline in ``compute_loss`` (BT, an optional margin, optional centering); its
maintainers' advice for another loss is to subclass and override ``compute_loss``. This subclass does
exactly that and nothing else of TRL's loop: TRL's own ``compute_loss`` still runs the forward and logs
its metrics (tokens, rewards, accuracy, margin), and its loss value is replaced by the registered
loss's, computed on the same rewards and on the final-token hidden states the ``score`` head reads.
- the hidden states: a forward pre-hook on the head keeps the ``[2B, H]`` rows at the index
  transformers' sequence classifiers read the reward from (the last non-pad token), never the
  ``[2B, L, H]`` tensor, and only while a distance-using loss needs them;
- stateful losses (NormBT's mu) move once per optimizer step (``end_step`` from a callback at each
  step's end) and their state is saved in every TRL checkpoint (``LOSS_STATE_FILE``) and restored on
  resume;
- the loss's metrics reach TRL's logger, reduced over accumulated micro-batches and processes by the
  core's rule (``rank_metrics.reduce_metrics``: ``*_min``/``*_max``/states/means).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import RewardTrainer

from normbt_plugin.losses import PreferenceLoss, build_loss, host_metrics
from normbt_plugin.rank_metrics import reduce_metrics

LOSS_STATE_FILE = "normbt_loss_state.json"  # in each TRL checkpoint folder


def last_token_index(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """The token transformers' ``*ForSequenceClassification`` reads the reward at: the rightmost
    token that is not padding (any padding side); the last one without a pad token."""
    if pad_token_id is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[-1] - 1, device=input_ids.device)
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device, dtype=torch.int32)
    return (positions * (input_ids != pad_token_id).int()).argmax(-1)


def reward_head(model: torch.nn.Module) -> torch.nn.Module:
    """The head that turns the final hidden states into the reward: ``score`` in transformers'
    decoder sequence classifiers, which TRL's RewardTrainer trains (a PEFT wrapper of it included)."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "score":
            return module
    raise ValueError(
        f"{type(model).__name__} has no 'score' head: the TRL adapter reads the hidden state of "
        "transformers' decoder sequence classifiers (AutoModelForSequenceClassification of a Llama, "
        "Qwen, Gemma, Mistral, ...), as TRL's RewardTrainer trains them"
    )


class _EndStep(TrainerCallback):
    """After each optimizer step: the loss folds the step into its state (``PreferenceLoss.end_step``)."""

    def __init__(self, loss: PreferenceLoss) -> None:
        self.loss = loss

    def on_step_end(self, args, state, control, **kwargs):
        self.loss.end_step()


class PluginRewardTrainer(RewardTrainer):
    """TRL's RewardTrainer with ``loss`` (a registered name with ``loss_options``, or a built loss)."""

    def __init__(
        self,
        *args: Any,
        loss: str | PreferenceLoss = "bt",
        loss_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.args.center_rewards_coefficient is not None:
            raise ValueError(
                "center_rewards_coefficient is TRL's own centering term; with the plugin's losses use "
                "loss='center' (--loss_type center --center.coef C) instead"
            )
        if isinstance(loss, PreferenceLoss):
            if loss_options:
                raise ValueError("loss_options go with a loss name, not with a built loss")
            self.plugin_loss = loss
        else:
            self.plugin_loss = build_loss(loss, **(loss_options or {}))
        self.plugin_loss.step_by_optimizer()
        self.add_callback(_EndStep(self.plugin_loss))
        self._plugin_metrics: dict[str, dict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list), "eval": defaultdict(list)
        }  # fmt: skip
        self._index: torch.Tensor | None = None
        self._hidden: torch.Tensor | None = None
        if self.plugin_loss.needs_hidden:
            reward_head(self.model).register_forward_pre_hook(self._keep_last_token_rows)

    def _keep_last_token_rows(self, module: torch.nn.Module, args: tuple) -> None:
        if self._index is None:  # a forward outside compute_loss (generation, a user's call)
            return
        hidden = args[0]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        self._hidden = hidden[rows, self._index.to(hidden.device)]  # [2B, H]; the [2B, L, H] is not kept

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        margin = inputs.get("margin")
        if self.plugin_loss.needs_hidden:
            pad = self.model.config.get_text_config().pad_token_id
            self._index = last_token_index(inputs["input_ids"], pad)
        try:  # TRL's forward and metrics; its loss value is replaced below
            _, outputs = super().compute_loss(model, inputs, return_outputs=True)
        finally:
            self._index = None
        hidden, self._hidden = self._hidden, None
        chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        h_c, h_r = torch.chunk(hidden, chunks=2) if hidden is not None else (None, None)
        loss, metrics = self.plugin_loss.train(mode == "train")(chosen, rejected, h_c, h_r, margin)
        for key, value in metrics.items():
            self._plugin_metrics[mode][key].append(value)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        collected = self._plugin_metrics[mode]
        if collected:  # every process logs together (TRL's own metrics gather at the same point)
            local = host_metrics(dict(collected))  # raises on NaN rewards or hidden states
            collected.clear()
            reduced = reduce_metrics(local, self.plugin_loss.state_metrics)
            logs.update({f"eval_{k}" if mode == "eval" else k: v for k, v in reduced.items()})
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            checkpoint = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder = os.path.join(self._get_output_dir(trial=trial), checkpoint)
            state = {"loss": type(self.plugin_loss).__name__, "state": self.plugin_loss.state_dict()}
            with open(os.path.join(folder, LOSS_STATE_FILE), "w") as f:
                json.dump(state, f)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, LOSS_STATE_FILE)
        if not os.path.isfile(path):
            return  # a checkpoint of TRL's own loss, or a stateless one: the state starts fresh
        with open(path) as f:
            saved = json.load(f)
        if saved["loss"] != type(self.plugin_loss).__name__:
            raise ValueError(
                f"{resume_from_checkpoint} was trained with {saved['loss']}, this run uses "
                f"{type(self.plugin_loss).__name__}: resume with the same loss or start a new output_dir"
            )
        self.plugin_loss.load_state_dict(saved["state"])
