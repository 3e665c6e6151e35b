"""LoRA reward models (and critics) that survive training: the value head trains in full and the
saved model is a whole one.

Why: with ``--ds.lora.rank R`` OpenRLHF 0.11.2 wraps every linear layer in LoRA (``all-linear``),
the value head ``score`` included, so the head's base weight stays its random initialisation, and
``save_model`` writes only the adapter: that weight is saved nowhere, ``normbt eval-rm`` and PPO's
``--reward.model_name_or_path`` cannot load the folder, and ``openrlhf.cli.lora_combiner --is_rm``
stops on a 2-label head (upstream PR #1342). A LoRA reward model was lost at the end of training.
What changes: ``get_peft_model``, as OpenRLHF's model module calls it for a model with a value head
(reward or critic), takes the head out of the LoRA targets (``exclude_modules``) and trains it in
full (``modules_to_save``); ``DeepspeedStrategy.save_model`` writes such a model merged (each LoRA
layer's ``W + scaling * B @ A``, the trained head) as an ordinary reward-model folder, loaded like a
fully fine-tuned one by eval-rm, PPO and ``AutoModelForSequenceClassification``, with the adapter
itself beside it in ``adapter/``. Actors and SFT models (no value head) keep upstream's behaviour.
"""

from __future__ import annotations

import functools
import gc
import importlib
import os

import torch
from torch import nn

from normbt_plugin.patches.openrlhf_0_11_2 import is_patched, mark_patched

ADAPTER_DIR = "adapter"  # in a saved LoRA reward model: the adapter it was merged from
PEFT_PREFIX = "base_model.model."


def needed() -> bool:
    return True


def value_head_prefix(model: nn.Module) -> str | None:
    """The value head's attribute name if ``model`` (or the model a PEFT wrapper holds) has one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "value_head_prefix", None)


def merged_state_dict(peft_model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain model's state dict from a PEFT LoRA model's full one (``state``, gathered from every
    rank): each LoRA layer's weight plus ``scaling * B @ A``, each ``modules_to_save`` module's
    trained copy, PEFT's prefixes gone. Merged in float32, stored in the weight's dtype."""
    from peft.tuners.lora import LoraLayer

    adapter = peft_model.active_adapter
    layers = {name: m for name, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    merged: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key or ".original_module." in key:
            continue  # the adapter's factors, and the head's untrained original
        module, _, leaf = key.rpartition(".")
        if module.endswith(".base_layer") and leaf == "weight":
            layer = layers[module.removesuffix(".base_layer")]
            if layer.use_dora.get(adapter, False) or not isinstance(layer.get_base_layer(), nn.Linear):
                raise NotImplementedError(f"normbt-plugin merges plain LoRA on linear layers, not {key}")
            a = state[f"{module.removesuffix('.base_layer')}.lora_A.{adapter}.weight"].float()
            b = state[f"{module.removesuffix('.base_layer')}.lora_B.{adapter}.weight"].float()
            delta = layer.scaling[adapter] * (b @ a)
            value = (value.float() + (delta.T if layer.fan_in_fan_out else delta)).to(value.dtype)
        name = key.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")
        merged[name.replace(f".modules_to_save.{adapter}.", ".")] = value
    return merged


def apply() -> None:
    model_module = importlib.import_module("openrlhf.models.model")
    if is_patched(model_module.get_peft_model, "lora_value_head"):
        return
    original_get_peft_model = model_module.get_peft_model

    @functools.wraps(original_get_peft_model)
    def get_peft_model(model, peft_config, *args, **kwargs):
        prefix = value_head_prefix(model)
        if prefix is not None:  # the head trains in full, not as a LoRA target
            peft_config.exclude_modules = [prefix]
            peft_config.modules_to_save = [*(peft_config.modules_to_save or []), prefix]
        return original_get_peft_model(model, peft_config, *args, **kwargs)

    model_module.get_peft_model = mark_patched(get_peft_model, "lora_value_head")

    ds_module = importlib.import_module("openrlhf.utils.deepspeed.deepspeed")
    strategy_cls = ds_module.DeepspeedStrategy
    original_save = strategy_cls.save_model

    @functools.wraps(original_save)
    def save_model(self, model, tokenizer, output_dir, **kwargs) -> None:
        from peft import PeftModel

        unwrapped = self._unwrap_model(model)
        if not isinstance(unwrapped, PeftModel) or value_head_prefix(unwrapped) is None:
            return original_save(self, model, tokenizer, output_dir, **kwargs)
        if self.args.ds.zero_stage > 2 or self.args.ds.tensor_parallel_size > 1:  # every rank gathers
            state = model._consolidated_16bit_state_dict()
        else:
            from deepspeed.checkpoint.utils import clone_tensors_for_torch_save

            state = clone_tensors_for_torch_save(unwrapped.state_dict())
        if self.is_rank_0():
            os.makedirs(output_dir, exist_ok=True)
            base = unwrapped.get_base_model()
            base.save_pretrained(output_dir, state_dict=merged_state_dict(unwrapped, state), **kwargs)
            unwrapped.config.to_json_file(os.path.join(output_dir, "config.json"))  # as upstream
            tokenizer.save_pretrained(output_dir)
            unwrapped.save_pretrained(os.path.join(output_dir, ADAPTER_DIR), state_dict=state)
            self.print(f"normbt-plugin: LoRA reward model merged into {output_dir} (adapter: {ADAPTER_DIR}/)")
        del state
        gc.collect()
        ds_module.torch_dist_barrier_and_cuda_sync()

    strategy_cls.save_model = mark_patched(save_model, "lora_value_head")
