"""File formats: what cnndsl reads and writes besides specs.

`npz` reads .npz archives without unpickling anything; `weights` writes and
loads weight files; `data` reads training sets, one module per format.
A new weight or data format is a new module here.
"""
