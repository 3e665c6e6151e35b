"""Recipe variables that cannot collide: a config only sets defaults (the user's environment wins),
names each variable once, the RM and PPO stages name their settings apart, and every recipe's
``--help`` lists the variables it reads (generated from its assignments, recipes/stage-times.sh)."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO

CONFIGS = sorted((REPO / "recipes" / "configs").glob("*.env"))
RECIPES = sorted((REPO / "recipes").glob("*.sh"))
ASSIGNED = re.compile(r"(?:^|[\s;])([A-Z_][A-Z0-9_]*)=")  # NAME= at a word start (not inside ${...})
READ_WITH_DEFAULT = re.compile(r"^([A-Z_][A-Z0-9_]*)=\$\{\1(?::-|-|:\?)", re.M)  # NAME=${NAME:-...}


def bash(script: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(["bash", "-c", script], cwd=REPO, env={"PATH": "/usr/bin:/bin", **(env or {})},
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return proc.stdout


def config_names(config: Path) -> list[str]:
    """The variables sourcing ``config`` sets, read off bash itself."""
    listed = bash(
        f'before=$(compgen -v); source {config}; comm -13 <(sort <<< "$before") <(compgen -v | sort)'
    )
    return [n for n in listed.split() if n != "before" and n.isupper()]


def code_lines(path: Path) -> list[str]:
    return [
        line.split(" #")[0] for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
    ]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_the_users_environment_wins_over_every_config(config):
    names = config_names(config)
    assert len(names) > 10, names  # the listing works: a config sets many
    mine = {name: f"user-{name}" for name in names}
    printed = bash(f"set -a; source {config}; set +a; " + "; ".join(f'echo "{n}=${n}"' for n in names), mine)
    lost = [line for line in printed.splitlines() if line.split("=", 1)[1] != mine[line.split("=", 1)[0]]]
    assert not lost, f"{config.name} overrides the user's setting: {lost}"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_a_config_names_each_variable_once(config):
    counts = Counter(name for line in code_lines(config) for name in ASSIGNED.findall(line))
    assert counts and not [n for n, c in counts.items() if c > 1], counts


def test_a_config_built_on_another_sets_what_differs_first():
    """multinode-llama3-8b.env sets its own defaults, then sources the single-node config, whose
    defaults fill in only what is still unset (no second assignment to override the first)."""
    config = REPO / "recipes" / "configs" / "multinode-llama3-8b.env"
    shown = bash(f'source {config}; echo "$NODES $VLLM_ENGINES $TRAIN_BS $ZERO $GPUS_PER_NODE"')
    assert shown.split() == ["2", "16", "256", "3", "8"]
    assert bash(f'source {config}; echo "$NODES"', {"NODES": "4"}).strip() == "4"


def test_the_rm_and_ppo_stages_name_their_settings_apart():
    rm = set(READ_WITH_DEFAULT.findall((REPO / "recipes" / "rm.sh").read_text()))
    ppo = set(READ_WITH_DEFAULT.findall((REPO / "recipes" / "ppo.sh").read_text()))
    assert {"MICRO_BS", "ZERO", "ATTN", "SEED"} <= rm and {"PPO_MICRO_BS", "PPO_ZERO", "PPO_SEED"} <= ppo
    assert rm & ppo == {"OUT"}, rm & ppo  # compare.sh and the studies give OUT per call


def micro_batches(run_dir: Path, **env: str) -> dict[str, set[str]]:
    """``--train.micro_batch_size`` of the RM and PPO commands ``compare.sh`` prints (tiny config)."""
    out = bash("bash recipes/compare.sh", {"DRY_RUN": "1", "RUN_DIR": str(run_dir), **env})
    found: dict[str, set[str]] = {"rm": set(), "ppo": set()}
    for line in out.splitlines():
        stage = (
            "rm" if "normbt_plugin.train_rm" in line else "ppo" if "normbt_plugin.train_ppo" in line else None
        )
        if stage:
            found[stage] |= set(re.findall(r"--train\.micro_batch_size (\d+)", line))
    return found


def test_a_stage_setting_reaches_its_own_stage_only(tmp_path):
    """The issue's case: ``MICRO_BS=8`` used to reach the RMs as 4 (the tiny config re-exported
    MICRO_BS=4 for PPO)."""
    assert micro_batches(tmp_path) == {"rm": {"4"}, "ppo": {"4"}}
    assert micro_batches(tmp_path, MICRO_BS="8") == {"rm": {"8"}, "ppo": {"4"}}
    assert micro_batches(tmp_path, PPO_MICRO_BS="2") == {"rm": {"4"}, "ppo": {"2"}}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_help_lists_every_variable_a_recipe_reads(recipe):
    if recipe.name in ("stage-times.sh", "run-files.sh"):
        pytest.skip("sourced by the recipes, not run")
    names = READ_WITH_DEFAULT.findall(recipe.read_text())
    assert names, recipe.name
    shown = bash(f"bash {recipe} --help")
    listed = re.findall(r"^  ([A-Z_][A-Z0-9_]*)[= ]", shown, re.M)
    assert listed == names, (recipe.name, set(names) ^ set(listed))


def test_stop_points_are_the_stop_point_lines():
    """A recipe's UNTIL values are its ``stop_point`` lines: --help lists them in order, an unknown
    UNTIL stops before any stage with that list, and each stop point ends a dry run there."""
    script = REPO / "recipes" / "downstream-study.sh"
    points = re.findall(r"^stop_point (\w+)$", script.read_text(), re.M)
    assert points == ["pairs", "rms", "bon", "tune"]
    help_text = bash("bash recipes/downstream-study.sh --help")
    assert f"Stop points (UNTIL=NAME ends the run there): {' '.join(points)} all" in help_text
    env = {"PATH": "/usr/bin:/bin", "DRY_RUN": "1", "UNTIL": "nonesuch"}
    proc = subprocess.run(["bash", str(script)], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=env, check=False)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert "UNTIL=nonesuch is not a stop point; its stop points: pairs rms bon tune all" in proc.stderr
    lengths = [len(bash("bash recipes/downstream-study.sh", {"DRY_RUN": "1", "UNTIL": p}).splitlines())
               for p in [*points, "all"]]  # fmt: skip
    assert lengths == sorted(lengths) and len(set(lengths)) == len(lengths), lengths


def test_the_run_files_the_recipes_name_are_the_packages_constants_and_typed_once():
    from normbt_plugin.rm_evaluation import CARD
    from normbt_plugin.rm_evaluation.diagnostics import GRADIENTS
    from normbt_plugin.runs.policy_eval import POLICY_EVAL
    from normbt_plugin.runs.rm_eval import EVAL

    names = dict(re.findall(r"^([A-Z_]+)=(\S+)", (REPO / "recipes" / "run-files.sh").read_text(), re.M))
    constants = {
        "EVAL_JSON": EVAL,
        "POLICY_EVAL_JSON": POLICY_EVAL,
        "CARD_JSON": CARD,
        "GRADIENTS_JSON": GRADIENTS,
    }
    assert {k: names[k] for k in constants} == constants
    typed = [
        f"{recipe.name}: {line.strip()}"
        for recipe in RECIPES
        if recipe.name != "run-files.sh"
        for line in code_lines(recipe)
        if any(re.search(rf"[/\s\"]{re.escape(v)}\b", line) for v in names.values())
    ]
    assert not typed, typed


def test_a_stage_done_when_its_own_out_exists_is_named_once(tmp_path):
    """``stage_run ... --out cmd``: the stage is done when the file the command's --out names exists; a
    rerun skips it; a command with no --out is refused before it runs. Every run line whose DONE file
    is its command's --out says so with ``--out`` (the output typed once)."""
    out = tmp_path / "result.txt"
    stage = f"source recipes/stage-times.sh; stage_run who {tmp_path}/logs {tmp_path}/times.tsv"
    first = bash(f"{stage} write --out bash -c 'echo ran >> {tmp_path}/runs; touch $2' _ --out {out}")
    again = bash(f"{stage} write --out bash -c 'echo ran >> {tmp_path}/runs; touch $2' _ --out {out}")
    assert out.exists() and (tmp_path / "runs").read_text() == "ran\n"
    assert first == "who: write\n" and again == "who: write (done before)\n"
    refused = subprocess.run(["bash", "-c", f"{stage} write --out touch {tmp_path}/other"], cwd=REPO,
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert refused.returncode == 2 and "DONE is --out, but the command has no --out" in refused.stderr
    assert not (tmp_path / "other").exists()
    run_line = re.compile(r'\brun\s+("[^"]*"|\S+)\s+("[^"]*"|\S+)\s+(.*)')
    twice = [
        f"{recipe.name}: {line.strip()}"
        for recipe in RECIPES
        for line in recipe.read_text().replace("\\\n", " ").splitlines()
        if (m := run_line.search(line)) and m[2] in re.findall(r'--out\s+("[^"]*"|\S+)', m[3])
    ]
    assert not twice, twice


def test_a_rerun_stage_keeps_the_earlier_attempts_log(tmp_path):
    """A stage stopped mid-run and rerun (resuming from its checkpoint) must not lose the first attempt's
    output (a resumed TRL run's first 64 steps were lost that way): it moves to NAME.earlier.log."""
    stage = f"source recipes/stage-times.sh; stage_run who {tmp_path}/logs {tmp_path}/times.tsv"
    for attempt in ("first", "second", "third"):
        bash(f"{stage} train '' echo {attempt}")
    logs = tmp_path / "logs"
    assert (logs / "train.log").read_text() == "third\n"
    assert (logs / "train.earlier.log").read_text() == "first\nsecond\n"
