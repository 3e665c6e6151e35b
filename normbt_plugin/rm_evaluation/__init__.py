"""Reward-model evaluation: pair builders, scoring, eval-rm, reports."""

CARD = "card.json"  # what a pair builder (evidence, humaneval) writes last: the recipes' sign it finished
