"""softmaxlab.harness: references, accuracy and speed runs, tables, plots and the softmaxlab command."""
