"""Metrics (the competition's kelp Dice), threshold search, evaluation of prediction folders."""
