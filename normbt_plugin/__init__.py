"""NormBT and baseline reward-model losses, registered for OpenRLHF's reward-model stage.

from normbt_plugin import available_losses, build_loss, host_metrics, register_loss
loss = build_loss("normbt", beta=0.9)
value, metrics = loss(chosen_reward, reject_reward, chosen_hidden, reject_hidden, margin=None)
floats = host_metrics(metrics)  # one device-to-host transfer; raises on NaN/inf inputs
"""

from normbt_plugin.losses import (
    PreferenceLoss,
    available_losses,
    build_loss,
    host_metrics,
    register_loss,
    registered_losses,
    unregister_loss,
)

__all__ = [
    "PreferenceLoss",
    "available_losses",
    "build_loss",
    "host_metrics",
    "register_loss",
    "registered_losses",
    "unregister_loss",
]
__version__ = "0.1.0"
