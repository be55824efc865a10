"""One module per CLI verb: each turns validated inputs into files in a run directory."""
