"""Scoring texts with a reward model: an OpenRLHF checkpoint through the adapter's loader, or any
HF sequence-classification model; rewards and the EOS hidden states the value head reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from normbt_plugin.rm_evaluation.pairs import EvalInputError

if TYPE_CHECKING:
    from normbt_plugin.options import SamplingOptions


class RewardScorer:
    """Scores texts with a reward model: an OpenRLHF checkpoint (OpenRLHF's own loader) or any
    HF sequence-classification reward model. Returns rewards and the EOS hidden states."""

    def __init__(
        self,
        model_path: str,
        *,
        loader: str = "auto",
        batch_size: int = 16,
        max_len: int = 1024,
        apply_chat_template: bool = False,
        input_template: str | None = None,
        device: str | None = None,
        dtype: str = "float32",
    ) -> None:
        from transformers import AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size, self.max_len = batch_size, max_len
        self.apply_chat_template = apply_chat_template
        if input_template is not None and "{}" not in input_template:
            raise EvalInputError(f"--input_template needs a '{{}}' for the prompt, got {input_template!r}")
        self.input_template = input_template
        config, self.loader = check_reward_model(model_path, loader)
        loader = self.loader
        torch_dtype = getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if loader == "openrlhf":
            from normbt_plugin.patches import load_reward_model

            model = load_reward_model(
                model_path,
                param_dtype={"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[dtype],
                value_head_prefix=getattr(config, "value_head_prefix", "score"),
            )
        else:
            from transformers import AutoModelForSequenceClassification

            model, info = AutoModelForSequenceClassification.from_pretrained(
                model_path, num_labels=1, output_loading_info=True
            )
            if info["missing_keys"]:  # e.g. a causal LM: its classification head would be random
                raise EvalInputError(
                    f"{model_path} is not a reward model for the HF loader: its checkpoint lacks "
                    f"{sorted(info['missing_keys'])[:3]} (a causal LM or base model?). Pass an "
                    "OpenRLHF reward model (--loader openrlhf) or train one with normbt_plugin.train_rm."
                )
        self.model = model.to(device=self.device, dtype=torch_dtype).eval()
        self.normed_head = None  # --plugin.value_head_layernorm models read LayerNorm(h)
        if loader == "openrlhf":
            from normbt_plugin.patches import normed_head

            self.normed_head = normed_head(self.model)

    @classmethod
    def for_samples(cls, model_path: str, opts: SamplingOptions) -> RewardScorer:
        """A reward model scoring a policy's samples with a sampling command's options."""
        return cls(
            model_path, batch_size=opts.batch_size, max_len=opts.max_len, dtype=opts.dtype,
            apply_chat_template=opts.apply_chat_template, input_template=opts.rm_input_template,
        )  # fmt: skip

    def format(self, prompt: str, response: str) -> str:
        """The text OpenRLHF's reward-model stage scores (its template or chat template, EOS)."""
        from normbt_plugin.patches import reward_text

        return reward_text(
            self.tokenizer,
            prompt,
            response,
            input_template=self.input_template,
            apply_chat_template=self.apply_chat_template,
        )

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards ``[N]`` and EOS hidden states ``[N, H]`` of one batch (autograd as the caller
        sets it)."""
        return self._forward(self._pad(self._token_ids(texts)))

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids as OpenRLHF's RM dataset makes them (no special tokens added), truncated."""
        return self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=self.max_len)[
            "input_ids"
        ]

    def _pad(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``input_ids`` and ``attention_mask`` (the reward is read at the last token).
        By hand: ``tokenizer.pad`` made eval_throughput.py's batch-16 run 5-10% slower."""
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, width - len(x) :] = torch.tensor(x, dtype=torch.long)
            mask[row, width - len(x) :] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def _forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        from normbt_plugin.hidden import eos_hidden_states

        input_ids, attention_mask = batch
        if self.loader == "openrlhf":
            reward, output = self.model(input_ids, attention_mask=attention_mask, return_output=True)
            last = output["last_hidden_state"]
        else:
            output = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            reward, last = output.logits.squeeze(-1), output.hidden_states[-1]
        hidden = eos_hidden_states(last, attention_mask, packed=False)
        if self.normed_head is not None:  # the distance the loss saw in training
            hidden = self.normed_head.normalize(hidden)
        return reward, hidden

    @torch.inference_mode()
    def score(self, texts: list[str], progress: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rewards ``[N]`` and EOS hidden states ``[N, H]`` in input order: every text tokenised in one
        call, then batched by token length (the least padding)."""
        from tqdm import tqdm

        ids = self._token_ids(texts)
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        rewards, hidden = np.empty(len(texts), dtype=np.float64), [None] * len(texts)
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc=progress or "scoring", disable=progress is None):
            idx = order[start : start + self.batch_size]
            reward, h = self._forward(self._pad([ids[i] for i in idx]))
            rewards[idx] = reward.float().cpu().numpy()  # one transfer per batch
            for j, h_j in zip(idx, h.float().cpu(), strict=True):
                hidden[j] = h_j
        return rewards, torch.stack(hidden).numpy()


def check_reward_model(model_path: str, loader: str = "auto") -> tuple[Any, str]:
    """The model's config and loader ('openrlhf' or 'hf'), after the checks that need no weights
    loaded: a model folder or name, and a value head in an OpenRLHF checkpoint."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise EvalInputError(f"{model_path} is not a model folder or name: {exc}") from exc
    if loader == "auto":
        loader = "openrlhf" if hasattr(config, "value_head_prefix") else "hf"
    if loader == "openrlhf":
        _require_value_head(model_path, getattr(config, "value_head_prefix", "score"))
    elif getattr(config, "value_head_layernorm", False):
        raise EvalInputError(
            f"{model_path} was trained with --plugin.value_head_layernorm: only OpenRLHF's loader "
            "(with the plugin's patch) rebuilds that head; use --loader openrlhf"
        )
    architectures = getattr(config, "architectures", None) or []
    if (
        loader == "hf"
        and architectures
        and not any("SequenceClassification" in a or "Reward" in a for a in architectures)
    ):
        raise EvalInputError(
            f"{model_path} is not a reward model: its architectures are {architectures} (a causal LM or "
            "base model?). Pass an OpenRLHF reward model or an HF sequence-classification RM."
        )
    return config, loader


def _require_value_head(model_path: str, prefix: str) -> None:
    """A folder without ``<prefix>.weight`` would get a random value head: not a reward model."""
    folder = Path(model_path)
    if not folder.is_dir():
        return  # a hub name: checked by the loader on users' nodes
    names: set[str] = set()
    index = folder / "model.safetensors.index.json"
    if index.exists():
        names = set(json.loads(index.read_text())["weight_map"])
    else:
        from safetensors import safe_open

        for f in folder.glob("*.safetensors"):
            with safe_open(str(f), "pt") as handle:
                names.update(handle.keys())
    if names and f"{prefix}.weight" not in names:
        raise EvalInputError(
            f"{model_path} is not a reward model: it has no value head '{prefix}.weight' (a causal "
            "LM or a base model?). Train one with normbt_plugin.train_rm."
        )
