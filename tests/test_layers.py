"""The import rule between the rooms, read off the source (every import, function-level included).

core (torch and numpy only) <- run files, shared machinery <- the OpenRLHF adapter
(``normbt_plugin/patches``) <- launchers, reward-model evaluation <- policy studies <- the entry
points (``cli``, ``train_*``). Only the adapter imports OpenRLHF or names a versioned patch folder;
the patch registry lists exactly the patch modules there are.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "normbt_plugin"
ADAPTER = PACKAGE / "patches"
# torch and numpy only; options: every option's declaration (the losses', the commands'), stdlib only
CORE = {"losses", "stats", "hidden", "rank_metrics", "collectives", "options"}
BASE = {"runs", "common"}  # the typed run files; machine facts, models, the tiny task, vLLM weights
# each room and what it may import (core, and itself, always)
ROOMS = {
    "runs": set(),
    "common": set(),
    "patches": BASE,
    "launchers": BASE | {"patches"},
    "rm_evaluation": BASE | {"patches"},
    "policy_studies": BASE | {"patches", "rm_evaluation"},
    "trl_adapter": BASE,  # TRL's RewardTrainer with the registry's losses
}
ENTRY_POINTS = {"__init__", "cli", "train_rm", "train_ppo", "train_sft", "autopatch"}  # import anything


def imports(path: Path) -> list[str]:
    """Every module ``path`` imports, absolute names."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def sources(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py"))


def plugin_module(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "normbt_plugin" and len(parts) > 1 else None


def test_only_the_adapter_imports_openrlhf_or_a_versioned_folder():
    outside = [p for p in sources(PACKAGE, REPO / "recipes") if ADAPTER not in p.parents]
    offenders = [
        f"{p.relative_to(REPO)}: {name}"
        for p in outside
        for name in imports(p)
        if name.split(".")[0] == "openrlhf" or "openrlhf_0_" in name
    ]
    # benchmarks time OpenRLHF's own step as the baseline, but reach the patches by the switch
    offenders += [
        f"{p.relative_to(REPO)}: {name}"
        for p in sources(REPO / "benchmarks")
        for name in imports(p)
        if "openrlhf_0_" in name
    ]
    assert not offenders, offenders


def test_only_the_trl_adapter_imports_trl():
    offenders = [
        f"{p.relative_to(REPO)}: {name}"
        for p in sources(PACKAGE, REPO / "recipes", REPO / "benchmarks")
        if PACKAGE / "trl_adapter" not in p.parents
        for name in imports(p)
        if name.split(".")[0] == "trl"
    ]
    assert not offenders, offenders


def test_core_imports_torch_numpy_and_core_only():
    allowed = set(sys.stdlib_module_names) | {"torch", "numpy", "normbt_plugin"}
    for name in sorted(CORE):
        for imported in imports(PACKAGE / f"{name}.py"):
            assert imported.split(".")[0] in allowed, (name, imported)
            assert plugin_module(imported) in (None, *CORE), (name, imported)


def test_each_room_imports_only_the_rooms_below_it():
    rooms = set()
    for path in sources(PACKAGE):
        parts = path.relative_to(PACKAGE).parts
        room = parts[0] if len(parts) > 1 else path.stem
        rooms.add(room)
        if room in CORE | ENTRY_POINTS:
            continue
        assert room in ROOMS, f"{room}: a new room or top-level module; give it a place in ROOMS"
        for imported in imports(path):
            layer = plugin_module(imported)
            allowed = {None, room, *CORE, *ROOMS[room]}
            assert layer in allowed, (str(path.relative_to(REPO)), imported)
    assert rooms == CORE | ENTRY_POINTS | set(ROOMS), rooms ^ (CORE | ENTRY_POINTS | set(ROOMS))


def test_one_registry_names_every_patch_module():
    from normbt_plugin.patches import SUPPORTED_OPENRLHF

    for package_name in SUPPORTED_OPENRLHF.values():
        package = importlib.import_module(package_name)
        folder = Path(package.__file__).parent
        modules = {p.stem for p in folder.glob("*.py")} - {"__init__", "surface"}
        assert set(package.PATCHES) == modules
        assert all(set(stages) <= {"rm", "ppo"} for stages in package.PATCHES.values())


def test_unknown_patch_switch_names_the_patches(openrlhf_patched):
    from normbt_plugin.patches import apply_openrlhf_patches

    with pytest.raises(TypeError, match="unknown patch 'registerd_loss'.*registered_loss"):
        apply_openrlhf_patches(registerd_loss=False)


@pytest.mark.parametrize("chat", [False, True])
def test_reward_text_is_what_openrlhfs_reward_dataset_tokenises(openrlhf_patched, tiny, chat):
    """The adapter's ``reward_text`` (eval-rm, eval-policy and the studies score it) against the
    token ids of OpenRLHF's own RewardDataset for the same rows."""
    from types import SimpleNamespace

    from datasets import Dataset
    from openrlhf.datasets.reward_dataset import RewardDataset
    from transformers import AutoTokenizer

    from normbt_plugin.common.tiny import CHAT_TEMPLATE
    from normbt_plugin.patches import reward_text

    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])
    rows = [json.loads(line) for line in open(tiny["test"])][:8]
    rows[0]["chosen"] += "\n\n"  # trailing newlines are stripped before the EOS
    template = None if chat else "Q: {}\nA:"
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
        rows = [
            {"prompt": [{"role": "user", "content": r["prompt"]}]}
            | {k: [{"role": "assistant", "content": r[k]}] for k in ("chosen", "rejected")}
            for r in rows
        ]
    data = SimpleNamespace(
        prompt_key="prompt", chosen_key="chosen", rejected_key="rejected", apply_chat_template=chat
    )
    args = SimpleNamespace(data=data, model=SimpleNamespace(margin_loss_enable=False))
    strategy = SimpleNamespace(args=args, print=print)
    dataset = RewardDataset(
        Dataset.from_list(rows), tokenizer, 256, strategy, input_template=template, num_processors=1
    )
    for i, row in enumerate(rows):
        chosen_ids = dataset[i][0][0].tolist()
        text = reward_text(
            tokenizer, row["prompt"], row["chosen"], input_template=template, apply_chat_template=chat
        )
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == chosen_ids, (i, text)


def test_the_loss_registry_is_read_through_its_public_functions():
    private = [
        f"{p.relative_to(REPO)}"
        for p in sources(PACKAGE, REPO / "tests", REPO / "benchmarks")
        if p.name not in ("losses.py", "test_layers.py")
        and ("_REGISTRY" in p.read_text() or "_ALIASES" in p.read_text())
    ]
    assert not private, private


def test_the_losses_page_option_table_is_the_options_dataclass():
    """docs/losses.md's NormBT table lists every option at its default (the dataclass is the source)."""
    import dataclasses

    from normbt_plugin.losses import NormBTOptions

    rows = re.findall(r"^\| `--normbt\.(\w+)` \| ([^|]+) \|", (REPO / "docs" / "losses.md").read_text(), re.M)
    documented = {name: default.strip().strip("`").split()[0] for name, default in rows}
    for f in dataclasses.fields(NormBTOptions):
        assert f.name in documented, f"docs/losses.md lacks --normbt.{f.name}"
        text = documented.pop(f.name)
        value = {"true": True, "false": False}.get(text, text)
        if isinstance(f.default, float):
            value = float(value)
        assert value == f.default, (f.name, text, f.default)
    assert not documented, f"docs/losses.md documents options that do not exist: {sorted(documented)}"
    # and the losses table has a row for every registered loss, naming the options it adds
    from normbt_plugin.losses import registered_losses

    text = (REPO / "docs" / "losses.md").read_text()
    normbt = {f.name for f in dataclasses.fields(NormBTOptions)}  # in the table above
    for spec in registered_losses():
        row = re.search(rf"^\| `{spec.name}`.*$", text, re.M)
        assert row, f"docs/losses.md's losses table lacks {spec.name}"
        options = dataclasses.fields(spec.options) if spec.options else ()
        inherited = normbt if spec.options and issubclass(spec.options, NormBTOptions) else set()
        for name in {f.name for f in options} - inherited:
            assert f"--{spec.name}.{name}" in row.group(), (spec.name, name)


def test_the_internals_patch_table_names_every_patch_once():
    """docs/internals.md's patch table is the registry's list: a patch added without its row, or a
    row left for a patch that is gone, fails here."""
    from normbt_plugin.patches.openrlhf_0_11_2 import PATCHES

    text = (REPO / "docs" / "internals.md").read_text()
    rows = re.findall(r"^\| `([a-z0-9_]+)` \|", text, re.M)
    patch_rows = [r for r in rows if r in PATCHES or (ADAPTER / "openrlhf_0_11_2" / f"{r}.py").exists()]
    assert sorted(patch_rows) == sorted(PATCHES)


def test_the_openrlhf_version_is_one_fact():
    """The supported OpenRLHF is the versioned patch folder; every other place that names a version
    (the GPU extra's pin, install-cpu's lock input, both locks) names that one."""
    from normbt_plugin.patches import SUPPORTED_OPENRLHF

    (supported,) = SUPPORTED_OPENRLHF
    pins = {
        "pyproject.toml": re.findall(
            r'"openrlhf(?:\[\w+\])?==([\w.]+)"', (REPO / "pyproject.toml").read_text()
        ),
        "scripts/install-cpu.sh": re.findall(
            r"\bopenrlhf==([\w.]+)", (REPO / "scripts/install-cpu.sh").read_text()
        ),
        **{
            lock: re.findall(r"^openrlhf==([\w.]+)", (REPO / lock).read_text(), re.M)
            for lock in ("requirements-cpu.lock", "requirements-gpu.lock")
        },
    }
    assert all(found == [supported] for found in pins.values()), (supported, pins)
