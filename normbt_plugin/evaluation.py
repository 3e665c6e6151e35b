"""Reward-model evaluation on preference pairs: accuracy per subset, RewardBench sections, the
RM-Bench style matrix, and accuracy by representation-distance quantile bin.

    normbt eval-rm --model ckpt/rm-normbt --data pairs.jsonl --out eval.json

Formats (``--format auto`` picks by the columns):
- ``pairs``: prompt (optional), chosen, rejected strings;
- ``rewardbench``: prompt, chosen, rejected, subset (RewardBench's own layout);
- ``rmbench``: prompt, chosen and rejected as three responses each (concise, detailed,
  detailed with markdown), domain.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normbt_plugin.stats import distance_bins, pair_distance

# RewardBench (allenai/reward-bench, rewardbench/constants.py): subsets per section, and the
# example counts used to weight them. math-prm has 447 pairs but counts 984, the six code
# subsets together, so that math and code weigh the same in Reasoning.
REWARDBENCH_SECTIONS = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": [
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ],
    "Safety": [
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}
REWARDBENCH_COUNTS = {
    "alpacaeval-easy": 100,
    "alpacaeval-length": 95,
    "alpacaeval-hard": 95,
    "mt-bench-easy": 28,
    "mt-bench-med": 40,
    "mt-bench-hard": 37,
    "math-prm": 984,
    "refusals-dangerous": 100,
    "refusals-offensive": 100,
    "llmbar-natural": 100,
    "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46,
    "xstest-should-refuse": 154,
    "xstest-should-respond": 250,
    "donotanswer": 136,
    "hep-cpp": 164,
    "hep-go": 164,
    "hep-java": 164,
    "hep-js": 164,
    "hep-python": 164,
    "hep-rust": 164,
}
RMBENCH_STYLES = ("concise", "detailed", "detailed_markdown")


class EvalInputError(ValueError):
    """Input that cannot be evaluated; the message says what to change."""


@dataclass
class Pairs:
    format: str
    prompts: list[str]
    chosen: list[Any]  # str, or a list of 3 str for rmbench
    rejected: list[Any]
    subsets: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.chosen)


def _load_rows(source: str, split: str) -> list[dict]:
    from datasets import load_dataset

    path = Path(source)
    if path.exists():
        if path.is_file() and path.stat().st_size == 0:
            raise EvalInputError(f"{source} is empty: nothing to evaluate")
        kind = "parquet" if path.suffix == ".parquet" else "json"
        data = load_dataset(kind, data_files=str(path), split="train")
    else:  # a dataset name, loaded from the hub on users' nodes
        data = load_dataset(source, split=split)
    return [dict(row) for row in data]


def load_pairs(
    source: str,
    format: str = "auto",
    *,
    prompt_key: str = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    subset_key: str | None = None,
    split: str = "train",
) -> Pairs:
    """Preference pairs from a local JSONL/JSON/Parquet file or a dataset name."""
    rows = _load_rows(source, split)
    if not rows:
        raise EvalInputError(f"{source} holds no rows: no preference pairs to evaluate")
    columns = list(rows[0])
    for key, flag in ((chosen_key, "--chosen_key"), (rejected_key, "--rejected_key")):
        if key not in columns:
            raise EvalInputError(
                f"{source} has no column {key!r}; its columns are {columns}. Pass {flag} <column>."
            )
    if format == "auto":
        first = rows[0][chosen_key]
        if isinstance(first, list) and len(first) == 3 and all(isinstance(x, str) for x in first):
            format = "rmbench"
        elif "subset" in columns:
            format = "rewardbench"
        else:
            format = "pairs"
    subset_key = subset_key or {"rewardbench": "subset", "rmbench": "domain"}.get(format)
    if subset_key and subset_key not in columns:
        raise EvalInputError(f"{format} data needs a {subset_key!r} column; columns: {columns}")
    pairs = Pairs(
        format=format,
        prompts=[str(r.get(prompt_key) or "") for r in rows],
        chosen=[r[chosen_key] for r in rows],
        rejected=[r[rejected_key] for r in rows],
        subsets=[str(r[subset_key]) for r in rows] if subset_key else [],
    )
    if format == "rmbench":
        bad = [
            i
            for i, (c, r) in enumerate(zip(pairs.chosen, pairs.rejected, strict=True))
            if len(c) != 3 or len(r) != 3
        ]
        if bad:
            raise EvalInputError(f"rmbench rows need 3 chosen and 3 rejected responses; row {bad[0]}")
    return pairs


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
        from normbt_plugin.hidden import eos_hidden_states

        batch = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_len,
            add_special_tokens=False,
        ).to(self.device)
        if self.loader == "openrlhf":
            reward, output = self.model(
                batch.input_ids, attention_mask=batch.attention_mask, return_output=True
            )
            last = output["last_hidden_state"]
        else:
            output = self.model(**batch, output_hidden_states=True)
            reward, last = output.logits.squeeze(-1), output.hidden_states[-1]
        hidden = eos_hidden_states(last, batch.attention_mask, packed=False)
        if self.normed_head is not None:  # the distance the loss saw in training
            hidden = self.normed_head.normalize(hidden)
        return reward, hidden

    @torch.no_grad()
    def score(self, texts: list[str], progress: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rewards ``[N]`` and EOS hidden states ``[N, H]``, batched by length, in input order."""
        from tqdm import tqdm

        lengths = [len(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        rewards, hidden = [None] * len(texts), [None] * len(texts)
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc=progress or "scoring", disable=progress is None):
            idx = order[start : start + self.batch_size]
            reward, h = self.forward([texts[i] for i in idx])
            reward, h = reward.float().cpu().tolist(), h.float().cpu()  # one transfer per batch
            for j, i in enumerate(idx):
                rewards[i], hidden[i] = reward[j], h[j]
        return np.asarray(rewards, dtype=np.float64), torch.stack(hidden).numpy()


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


# ----------------------------------------------------------------------------- metrics


def accuracy(chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """Per-pair correctness: 1 if chosen scores higher, 0.5 for a tie, else 0."""
    return np.where(chosen > rejected, 1.0, np.where(chosen == rejected, 0.5, 0.0))


def rewardbench_sections(per_subset: dict[str, float]) -> dict[str, Any]:
    """RewardBench section scores (count-weighted subset accuracies) and their mean."""
    sections, missing = {}, []
    for section, subsets in REWARDBENCH_SECTIONS.items():
        present = [s for s in subsets if s in per_subset]
        missing += [s for s in subsets if s not in per_subset]
        if present:
            total = sum(REWARDBENCH_COUNTS[s] for s in present)
            sections[section] = sum(per_subset[s] * REWARDBENCH_COUNTS[s] for s in present) / total
    overall = sum(sections.values()) / len(sections) if sections else math.nan
    return {"sections": sections, "overall": overall, "missing_subsets": missing}


def rmbench_matrix(chosen: np.ndarray, rejected: np.ndarray) -> dict[str, Any]:
    """RM-Bench: acc[i][j] = P(chosen in style i beats rejected in style j), styles concise,
    detailed, detailed+markdown; hard = above the diagonal (chosen plainer), normal = diagonal,
    easy = below."""
    matrix = accuracy(chosen[:, :, None], rejected[:, None, :]).mean(axis=0)
    upper = matrix[np.triu_indices(3, 1)].mean()
    lower = matrix[np.tril_indices(3, -1)].mean()
    return {
        "matrix": matrix.tolist(),
        "hard": float(upper),
        "normal": float(np.diag(matrix).mean()),
        "easy": float(lower),
        "average": float(matrix.mean()),
    }


def evaluate_pairs(scorer: RewardScorer, pairs: Pairs, n_bins: int = 5, progress: bool = True) -> dict:
    """Score every response once; report accuracy overall, per subset, per section/style, per bin."""
    if pairs.format == "rmbench":
        chosen_texts = [
            scorer.format(p, c) for p, cs in zip(pairs.prompts, pairs.chosen, strict=True) for c in cs
        ]
        rejected_texts = [
            scorer.format(p, r) for p, rs in zip(pairs.prompts, pairs.rejected, strict=True) for r in rs
        ]
    else:
        chosen_texts = [scorer.format(p, c) for p, c in zip(pairs.prompts, pairs.chosen, strict=True)]
        rejected_texts = [scorer.format(p, r) for p, r in zip(pairs.prompts, pairs.rejected, strict=True)]
    label = "scoring chosen" if progress else None
    c_score, c_hidden = scorer.score(chosen_texts, label)
    r_score, r_hidden = scorer.score(rejected_texts, label and "scoring rejected")
    distance = pair_distance(torch.from_numpy(c_hidden), torch.from_numpy(r_hidden)).numpy()  # L2: see stats

    result: dict[str, Any] = {"format": pairs.format, "pairs": len(pairs), "loader": scorer.loader}
    if pairs.format == "rmbench":
        c3, r3 = c_score.reshape(-1, 3), r_score.reshape(-1, 3)
        correct = accuracy(c3, r3).mean(axis=1)  # same-style comparisons per prompt
        distance = distance.reshape(-1, 3).mean(axis=1)
        result["rmbench"] = rmbench_matrix(c3, r3)
        result["rmbench_by_domain"] = {
            d: rmbench_matrix(c3[mask], r3[mask])
            for d in sorted(set(pairs.subsets))
            if (mask := np.array(pairs.subsets) == d).any()
        }
        chosen_scores, rejected_scores = c3.tolist(), r3.tolist()
    else:
        correct = accuracy(c_score, r_score)
        chosen_scores, rejected_scores = c_score.tolist(), r_score.tolist()
    result["accuracy"] = float(correct.mean())
    result["ties"] = int((np.asarray(c_score) == np.asarray(r_score)).sum())
    if pairs.subsets:
        groups: dict[str, list[float]] = defaultdict(list)
        for s, ok in zip(pairs.subsets, correct, strict=True):
            groups[s].append(ok)
        result["per_subset"] = {s: float(np.mean(v)) for s, v in sorted(groups.items())}
        result["subset_sizes"] = {s: len(v) for s, v in sorted(groups.items())}
        if pairs.format == "rewardbench":
            result["rewardbench"] = rewardbench_sections(result["per_subset"])
    result["distance_bins"] = distance_bins(distance, correct, n_bins)
    result["per_pair"] = {
        "chosen": chosen_scores,
        "rejected": rejected_scores,
        "correct": correct.tolist(),
        "distance": distance.tolist(),
        "subset": pairs.subsets,
    }
    return result


def format_report(result: dict) -> str:
    """A readable table of an ``evaluate_pairs`` result."""
    lines = [f"pairs: {result['pairs']} ({result['format']}), accuracy {result['accuracy']:.4f}"]
    if result.get("ties"):
        lines[0] += f", ties {result['ties']} (counted as 0.5)"
    if "rewardbench" in result:
        rb = result["rewardbench"]
        for section, score in rb["sections"].items():
            lines.append(f"  {section:<10} {score:.4f}")
        lines.append(f"  {'overall':<10} {rb['overall']:.4f}")
        if rb["missing_subsets"]:
            lines.append(f"  (subsets not in the data: {', '.join(rb['missing_subsets'])})")
    if "rmbench" in result:
        rm = result["rmbench"]
        lines.append(f"  RM-Bench easy {rm['easy']:.4f}  normal {rm['normal']:.4f}  hard {rm['hard']:.4f}")
    for subset, acc in result.get("per_subset", {}).items():
        lines.append(f"  subset {subset:<28} {acc:.4f}  (n={result['subset_sizes'][subset]})")
    if result["distance_bins"]:
        lines.append("  accuracy by representation-distance quantile bin (closest first):")
        for i, b in enumerate(result["distance_bins"]):
            lines.append(f"    bin {i}  {b['lo']:>10.4g}-{b['hi']:<10.4g} n={b['n']:<6} acc {b['acc']:.4f}")
    return "\n".join(lines)
