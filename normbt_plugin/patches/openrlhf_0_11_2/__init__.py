"""Patches for OpenRLHF 0.11.2, one module each (see each module's docstring for why).

Each module has ``NAME``, ``needed()`` (whether it applies on this machine) and ``apply()``.
"""

from normbt_plugin.patches.openrlhf_0_11_2 import (
    cli_options,
    cpu_gloo,
    dataset_keys,
    flash_attn_standin,
)

# Order matters: the flash-attn stand-in must exist before any openrlhf.models import, and
# registered_loss imports the trainer, so it is loaded lazily in normbt_plugin.patches.
EARLY = (flash_attn_standin, cpu_gloo, dataset_keys, cli_options)
LATE = ("registered_loss",)
