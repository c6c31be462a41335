"""The ``maskgit`` trainer: a masked-token prior over a tokenizer run's code grids."""
