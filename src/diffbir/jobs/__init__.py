"""Jobs: the run loop over many images (inputs, outputs, failures, sharding across processes)."""
