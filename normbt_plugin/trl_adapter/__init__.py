"""The TRL adapter: every registered loss (NormBT and its family included) in TRL's ``RewardTrainer``,
from the same core as the OpenRLHF adapter. The only package of normbt_plugin that imports TRL.

    from normbt_plugin.trl_adapter import PluginRewardTrainer
    trainer = PluginRewardTrainer(model, args=RewardConfig(...), train_dataset=..., loss="normbt")

or from the command line, as TRL's own ``trl reward`` plus ``--loss_type`` and the loss's options:
``python -m normbt_plugin.trl_adapter.reward --loss_type normbt --normbt.beta 0.9 ...``.
"""

from normbt_plugin.trl_adapter.trainer import LOSS_STATE_FILE, PluginRewardTrainer

__all__ = ["LOSS_STATE_FILE", "PluginRewardTrainer"]
