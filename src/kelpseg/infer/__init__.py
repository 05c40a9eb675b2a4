"""Inference: prediction from run directories, TTA, ensembles, submission archives."""
