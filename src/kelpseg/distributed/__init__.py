"""Scale-out on Ray: hyper-parameter sweeps and parallel fold training."""
