"""Training: config, dataset, transforms, sampler, models, losses, Lightning module, run directories."""
