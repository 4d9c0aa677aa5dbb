"""Training data: the formats cnndsl reads, one module each, behind `load_data`.

`load` picks the reader for what --data names; `dataset` holds the Dataset,
the compact `Images` and the checks every reader shares; `digits`, `idx`,
`arrays` (.npz) and `images` (class folders) read one format each; `augment`
transforms batches while training. A new data format is a new module here,
named in `load`.
"""

from cnndsl.formats.data.arrays import load_npz
from cnndsl.formats.data.augment import augment_images
from cnndsl.formats.data.dataset import DataError, Dataset, Images, check
from cnndsl.formats.data.digits import load_digits
from cnndsl.formats.data.idx import load_idx, read_idx
from cnndsl.formats.data.images import load_image_folder, load_images, read_image
from cnndsl.formats.data.load import class_names, load_data

__all__ = [
    "DataError",
    "Dataset",
    "Images",
    "augment_images",
    "check",
    "class_names",
    "load_data",
    "load_digits",
    "load_idx",
    "load_image_folder",
    "load_images",
    "load_npz",
    "read_idx",
    "read_image",
]
