"""HTTP: the shared router and the one error mapping. Knows nothing of torch."""
