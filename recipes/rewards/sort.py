"""The tiny task's true reward for OpenRLHF's PPO: ``--reward.remote_url recipes/rewards/sort.py``.

OpenRLHF loads this file and calls ``reward_func(queries, prompts, labels)``; the function lives in
``normbt_plugin.common.tasks`` (the same one ``normbt eval-policy --gold_fn`` uses).
"""

from normbt_plugin.common.tasks import reward_func

__all__ = ["reward_func"]
