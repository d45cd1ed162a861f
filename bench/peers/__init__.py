"""One module per peer. Each imports its library inside a try (IMPORT_ERROR says why it is missing)
and offers KEY, NAME, version(), setup(threads), mlp(spec, weights, kind) -> Impl, and optionally
gemm(spec) -> Impl. A case a peer does not cover raises spec.NotApplicable."""
