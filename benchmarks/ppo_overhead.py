"""PPO step time with the plugin's PPO patches vs with only those a CPU needs, side by side.

The PPO stage of the plugin has two kinds of patches: those that make OpenRLHF run without a GPU
(``flash_attn_standin``, ``cpu_gloo``, ``cpu_ppo``, ``vllm_cpu``; none of them applies on a GPU
node with flash-attn) and the plugin's own (``reward_norm``; ``rollout_log`` is opt-in and off
here). Arm "cpu-only" turns the plugin's own off (``NORMBT_PLUGIN_DISABLE``), arm "plugin" runs
everything; both run the same tiny PPO (``recipes/ppo.sh`` with ``recipes/configs/tiny-cpu.env``)
on the policy and NormBT reward model of a tiny chain run, interleaved A B B A. Reported: the
median of OpenRLHF's own per-step timings (``timing/step_total`` etc.), first step of each run
left out (it includes vLLM's warm-up), and each run's wall time.

    bash recipes/compare.sh                          # once: RUN_DIR=runs/compare
    python benchmarks/ppo_overhead.py --run_dir runs/compare --repeats 2
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
ARMS = {"cpu-only": "reward_norm,rollout_log", "plugin": ""}
KEYS = (
    "timing/step_total",
    "timing/generation",
    "timing/make_experience",
    "timing/ppo_train",
    "timing/broadcast",
)
STEP = re.compile(r"Global step (\d+): (\{.*\})")


def tiny_env() -> dict[str, str]:
    out = subprocess.run(
        ["bash", "-c", "set -a; source recipes/configs/tiny-cpu.env; env -0"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return dict(item.split("=", 1) for item in out.stdout.split("\0") if "=" in item)


def run_arm(arm: str, run_dir: Path, prompts: int, workdir: Path) -> tuple[list[dict], float]:
    env = {
        **tiny_env(),
        "POLICY": str(run_dir / "policy"),
        "RM": str(run_dir / "rm-normbt-seed1" / "model"),
        "PROMPTS": str(run_dir / "tiny" / "prompts.jsonl"),
        "OUT": str(workdir / arm),
        "MAX_SAMPLES": str(prompts),
        "NORMALIZE_REWARD": "0",  # both arms alike, whatever reward_norm does to loading
        "ROLLOUT_LOG": "0",
        "NORMBT_PLUGIN_DISABLE": ARMS[arm],
        "OMP_NUM_THREADS": "1",
    }
    start = time.perf_counter()
    proc = subprocess.run(["bash", "recipes/ppo.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"{arm} run failed:\n{output[-3000:]}")
    steps = [ast.literal_eval(m.group(2)) for m in STEP.finditer(output)]
    return steps[1:], wall  # the first step includes vLLM's warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", type=Path, default=REPO / "runs" / "compare", help="a tiny chain run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per arm (A B B A ...)")
    parser.add_argument("--prompts", type=int, default=40, help="prompts per run (8 per PPO step)")
    args = parser.parse_args()
    if not (args.run_dir / "rm-normbt-seed1" / "model").exists():
        raise SystemExit(f"no tiny chain run in {args.run_dir}: run `bash recipes/compare.sh` first")
    order = [
        arm
        for r in range(args.repeats)
        for arm in (("cpu-only", "plugin") if r % 2 == 0 else ("plugin", "cpu-only"))
    ]
    steps: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    walls: dict[str, list[float]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        for i, arm in enumerate(tqdm(order, desc="PPO runs (A B B A)")):
            got, wall = run_arm(arm, args.run_dir, args.prompts, Path(tmp) / str(i))
            steps[arm] += got
            walls[arm].append(wall)
    print(f"\ntiny PPO, {args.prompts} prompts per run, {args.repeats} runs per arm, CPU x{os.cpu_count()}")
    print(
        f"{'arm':<10} {'steps':>5} "
        + " ".join(f"{k.split('/')[1]:>15}" for k in KEYS)
        + f" {'run wall s':>11}"
    )
    med = {arm: {k: statistics.median(s[k] for s in steps[arm]) for k in KEYS} for arm in ARMS}
    for arm in ARMS:
        cells = " ".join(f"{med[arm][k]:>15.4f}" for k in KEYS)
        print(f"{arm:<10} {len(steps[arm]):>5} {cells} {statistics.median(walls[arm]):>11.1f}")
    ratio = med["plugin"]["timing/step_total"] / med["cpu-only"]["timing/step_total"]
    print(f"plugin / cpu-only: step_total x{ratio:.4f}")


if __name__ == "__main__":
    main()
