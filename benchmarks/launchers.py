"""What a one-node multi-rank launch costs before the first rank runs: DeepSpeed's launcher
(``deepspeed --num_gpus N --module``: its runner, then ``deepspeed.launcher.launch``, each importing
DeepSpeed and torch) against torchrun (``torchrun --nproc-per-node N -m``), the one recipes/rm.sh
uses on one node. Both start the same trivial module (``platform``), alternated (A B B A), and the
median wall time of each is printed with their ratio.

    python benchmarks/launchers.py --ranks 2 --repeats 4
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from normbt_plugin.common.ports import free_port

BIN = Path(sys.executable).parent


def launch(kind: str, ranks: int) -> float:
    port = str(free_port())
    cmd = {
        "deepspeed": [BIN / "deepspeed", "--num_gpus", str(ranks), "--master_port", port,
                      "--module", "platform"],
        "torchrun": [BIN / "torchrun", "--nnodes", "1", "--nproc-per-node", str(ranks), "--master-port", port,
                     "-m", "platform"],
    }[kind]  # fmt: skip
    start = time.perf_counter()
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True, timeout=300)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4, help="pairs of launches, alternated A B B A")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"deepspeed": [], "torchrun": []}
    for i in range(args.repeats):
        for kind in ("deepspeed", "torchrun") if i % 2 == 0 else ("torchrun", "deepspeed"):
            times[kind].append(launch(kind, args.ranks))
    ds, tr = (statistics.median(times[k]) for k in ("deepspeed", "torchrun"))
    print(f"{args.ranks} ranks, median of {args.repeats}: deepspeed {ds:.2f} s, torchrun {tr:.2f} s, "
          f"deepspeed / torchrun x{ds / tr:.1f}, {ds - tr:.1f} s saved per launch")  # fmt: skip


if __name__ == "__main__":
    main()
