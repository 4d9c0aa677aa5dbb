"""Training: the Keras-style `Model`, `fit`, optimizers, losses, checkpoints and guards.

`model` is the API (compile, fit, evaluate, predict, weights); `fit` the
epochs-and-batches loop with `history` its record and callbacks;
`optimizers` and `losses` hold one class per formula; `checkpoint` saves and
resumes a run bit for bit; `guards` refuse a batch that would not fit in
memory and stop a step whose loss turns non-finite.
"""
