"""The files one stage writes and another reads, one typed owner each (docs/internals.md):

    rm.py           an RM run's metrics folder: RunMeta, step records, EvalRecord (the trainer writes)
    rm_eval.py      eval.json: RmEval (eval-rm writes; compare and bon-study read)
    generations.py  generations/<policy>.jsonl: Generation (vLLM sampling writes; eval-policy,
                    label-pairs and standardize read)
    policy_eval.py  policy_eval.json: PolicyEval (eval-policy writes; compare and bon-study read)
    ppo.py          a PPO run's rollouts.jsonl (Rollout) and run.json (RunRecord)
    files.py        dataclass <-> JSON, validated on reading (pydantic)

Nothing here imports above the core: the training ranks and the PPO actor import these.
"""
