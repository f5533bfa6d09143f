"""softmaxlab.derivations: SymPy derivations that check every gradient and bound the kernels use."""
