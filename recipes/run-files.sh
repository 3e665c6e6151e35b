# Sourced (through stage-times.sh) by the recipes: the run files they name, each once. The names are
# normbt_plugin's constants (tests/test_recipe_variables.py holds them equal, and no recipe types one out).
EVAL_JSON=eval.json                      # normbt_plugin.runs.rm_eval.EVAL: eval-rm's result in an RM run
POLICY_EVAL_JSON=policy_eval.json        # normbt_plugin.runs.policy_eval.POLICY_EVAL: eval-policy's
CARD_JSON=card.json                      # normbt_plugin.rm_evaluation.CARD: a pair builder's, written last
GRADIENTS_JSON=gradients.json            # normbt_plugin.rm_evaluation.diagnostics.GRADIENTS: diagnose's
HUMANEVAL_EVAL_JSON=eval-humaneval.json  # the SmolLM2 study's eval-rm on HumanEval's pairs (its own name)
