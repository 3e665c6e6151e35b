"""Apply normbt-plugin's OpenRLHF patches in every Python process of a job that asks for it.

A Ray PPO job runs OpenRLHF in many processes the launcher never touches: Ray workers (DeepSpeed
models, vLLM engine actors) and vLLM's engine-core subprocesses. The launcher puts this folder
first on PYTHONPATH and sets NORMBT_PLUGIN_PATCHES=ppo in the job's environment,
which Ray and vLLM pass on. Python imports ``sitecustomize`` at start-up; this one only installs
an import hook, so processes that never import OpenRLHF or vLLM pay nothing. The first import
of either runs ``apply_openrlhf_patches`` right after it. Any other ``sitecustomize`` on the path
still runs. Without the variable this module does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

ENV = "NORMBT_PLUGIN_PATCHES"
TRIGGERS = ("openrlhf", "vllm")
_HERE = os.path.dirname(os.path.abspath(__file__))


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in TRIGGERS:
            return None
        sys.meta_path.remove(self)  # once per process
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_patch(module) -> None:
            exec_module(module)  # the import system put it in sys.modules already
            from normbt_plugin.patches import apply_openrlhf_patches

            apply_openrlhf_patches(ppo=True)

        spec.loader.exec_module = exec_then_patch
        return spec


def _chain_next_sitecustomize() -> None:
    others = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if os.environ.get(ENV) == "ppo":  # the only stage with processes the launchers never start
    sys.meta_path.insert(0, _PatchAfterImport())
_chain_next_sitecustomize()
