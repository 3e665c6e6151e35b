"""Patches for OpenRLHF 0.11.2, one module each (see each module's docstring for why).

Each module has ``NAME``, ``needed()`` (whether it applies on this machine) and ``apply()``.
"""

# Application order: the flash-attn stand-in must exist before any openrlhf.models import;
# the later ones import OpenRLHF's trainers (and, for PPO, Ray and vLLM).
ORDER = (
    "flash_attn_standin",
    "cpu_gloo",
    "cpu_fp32",
    "dataset_keys",
    "cli_options",
    "registered_loss",
    "cpu_ppo",
    "vllm_cpu",
    "value_head_norm",
    "reward_norm",
    "rollout_log",
)
# what each stage applies (where needed on the machine); both start with the machine patches
MACHINE = ("flash_attn_standin", "cpu_gloo", "cpu_fp32")
RM = (
    *MACHINE,
    "dataset_keys",
    "cli_options",
    "registered_loss",
    "value_head_norm",
)
PPO = (
    *MACHINE,
    "cpu_ppo",
    "vllm_cpu",
    "value_head_norm",
    "reward_norm",
    "rollout_log",
)
