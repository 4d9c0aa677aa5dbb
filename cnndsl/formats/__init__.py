"""File formats: what cnndsl reads and writes besides specs.

`files` opens user-named files (regular files only, reads bounded); `npz`
reads .npz archives without unpickling anything or trusting a size; `weights`
writes and loads weight files; `data` reads training sets, one module per format.
A new weight or data format is a new module here.
"""
