"""The machine and the installed packages: the CPU environment's lock, and the CPU's dtype.

    python -m normbt_plugin.common.environment --check requirements-cpu.lock   # exit 1 on any difference
    python -m normbt_plugin.common.environment --bytecode  # compile site-packages lacking bytecode

``scripts/install-cpu.sh`` installs every distribution at the version in ``requirements-cpu.lock``
and ends with this check; ``normbt doctor`` runs it too, so a hand-made environment shows what
differs (and the command that fixes it) before a run fails an hour in.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import site
import sys
from dataclasses import dataclass
from importlib.metadata import distributions
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_LOCK = Path(__file__).resolve().parents[2] / "requirements-cpu.lock"
SELF = "normbt-plugin"
# Without a GPU every CPU default trains in float32: on CPUs without native bf16 (AVX2 only) a
# bf16 matmul is ~75x slower than float32 (docs/benchmarks.md), vLLM's CPU engine runs float32
# anyway, and float32 leaves no bf16 ties between close rewards.
CPU_PARAM_DTYPE = "fp32"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# vLLM's CPU engines (eval-policy's and PPO's rollout engines), where not set already: 1 GiB of KV
# cache (vLLM's default is 4), and the model worker inside the engine process instead of a
# spawned one of its own (vLLM's CPU platform then uses its uni executor): an engine start took
# 3.2 s instead of 21.4 s on 2 cores, with the same greedy output.
VLLM_CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
# What every stage's processes import. Where PYTHONDONTWRITEBYTECODE=1 is set and a venv was installed
# without bytecode, each process compiles them from source: importing torch, deepspeed,
# openrlhf.trainer.ray and vllm took 18 s instead of 7.8 s here (docs/install.md).
HEAVY_PACKAGES = ("torch", "transformers", "deepspeed", "openrlhf", "vllm", "ray")
COMPILED_ENOUGH = 0.9  # share of a package's modules with bytecode (a few of torch's never compile)


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX), not by float32 emulation."""
    return any(f in (cpu_flags() if flags is None else flags) for f in BF16_FLAGS)


def cpu_summary() -> str:
    import torch

    bf16 = "native bf16" if native_bf16() else "no native bf16: bf16 is emulated, ~75x slower"
    return f"{torch.backends.cpu.get_cpu_capability()} ({bf16})"


@dataclass(frozen=True)
class Difference:
    name: str
    locked: str | None  # None: installed but not in the lock
    installed: str | None  # None: locked but not installed

    def describe(self) -> str:
        if self.installed is None:
            return f"{self.name}: not installed, locked {self.locked}"
        if self.locked is None:
            return f"{self.name}: {self.installed} installed, not in the lock"
        return f"{self.name}: {self.installed} installed, locked {self.locked}"

    def fix(self) -> str:
        bin_dir = Path(sys.executable).parent
        installer = f"{bin_dir / 'uv'} pip" if (bin_dir / "uv").exists() else f"{sys.executable} -m pip"
        target = f" --python {sys.executable}" if "uv" in installer else ""
        if self.locked is None:
            return f"{installer} uninstall{target} {self.name}"
        source = ""
        if "+cpu" in self.locked:  # torch's CPU build is not on PyPI
            source = " --index-url https://download.pytorch.org/whl/cpu"
        return f"{installer} install{target} --no-deps{source} '{self.name}=={self.locked}'"


def read_lock(path: Path) -> dict[str, str]:
    """``name==version`` lines (comments and blank lines skipped), names canonicalised."""
    pins = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, pinned = line.partition("==")
        if not sep or not pinned.strip():
            raise ValueError(f"{path}:{number}: {raw!r} is not an exact 'name==version' pin")
        pins[canonicalize_name(name.split("[", 1)[0])] = pinned.strip()
    return pins


def installed() -> dict[str, str]:
    """Every distribution installed in this interpreter's site-packages, names canonicalised
    (not what other packages vendor: setuptools puts its ``_vendor`` folder on sys.path)."""
    found = {}
    for dist in distributions(path=site.getsitepackages()):
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist.version)
    return found


def differences(
    lock: dict[str, str], present: dict[str, str] | None = None, allow_extra: bool = False
) -> list[Difference]:
    """What differs between the lock and the environment (this package itself is not locked);
    ``allow_extra``: distributions the lock does not name are the user's (a GPU node's own env)."""
    present = installed() if present is None else present
    diffs = []
    for name in sorted(set(lock) | set(present)):
        if name == SELF or (allow_extra and name not in lock):
            continue
        want, have = lock.get(name), present.get(name)
        if want is not None and have is not None and Version(want) == Version(have):
            continue
        diffs.append(Difference(name, want, have))
    return diffs


def check(path: Path, allow_extra: bool = False) -> list[Difference]:
    return differences(read_lock(path), allow_extra=allow_extra)


def bytecode_share(package: str) -> float | None:
    """The share of ``package``'s modules whose bytecode is in place and readable (None: not installed)."""
    spec = importlib.util.find_spec(package)  # a top-level name: found without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    sources = [p for folder in spec.submodule_search_locations for p in Path(folder).rglob("*.py")]
    if not sources:
        return None
    compiled = sum(Path(importlib.util.cache_from_source(str(p))).exists() for p in sources)
    return compiled / len(sources)


def missing_bytecode(packages: tuple[str, ...] = HEAVY_PACKAGES) -> list[str]:
    """The installed ``packages`` that would be compiled from source by every process importing them."""
    shares = {name: bytecode_share(name) for name in packages}
    return [name for name, share in shares.items() if share is not None and share < COMPILED_ENOUGH]


def compile_site_packages() -> None:
    """Bytecode for every module of this interpreter's site-packages (what ``uv --compile-bytecode``
    does at install; needed for a venv installed without it)."""
    for folder in site.getsitepackages():
        # quiet=2: torch ships modules only Python 3.12 parses; they fail here as in any compileall run
        compileall.compile_dir(folder, quiet=2, workers=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="compare the installed packages with a lock file")
    parser.add_argument("--check", type=Path, default=REPO_LOCK, metavar="LOCK")
    parser.add_argument("--allow-extra", action="store_true",
                        help="distributions the lock does not name are the user's")  # fmt: skip
    parser.add_argument("--bytecode", action="store_true",
                        help="also compile site-packages if the heavy packages have no bytecode")  # fmt: skip
    args = parser.parse_args(argv)
    if args.bytecode and (missing := missing_bytecode()):
        print(f"environment: no bytecode for {', '.join(missing)}: compiling site-packages")
        compile_site_packages()
        if missing := missing_bytecode():
            print(f"environment: still no bytecode for {', '.join(missing)}")
            return 1
    diffs = check(args.check, args.allow_extra)
    for diff in diffs:
        print(f"{diff.describe()}\n    fix: {diff.fix()}")
    if diffs:
        print(
            f"{len(diffs)} distribution(s) differ from {args.check}; or rebuild the environment: "
            "rm -rf .venv && bash scripts/install-cpu.sh"
        )
        return 1
    print(f"environment: every distribution as in {args.check} ({len(read_lock(args.check))} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
