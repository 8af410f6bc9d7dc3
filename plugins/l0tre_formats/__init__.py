"""The built-in data-set formats: .npz, MNIST IDX, CSV and folders of class folders.

A plugin like any other: it registers one ``DataFormat`` object per format through the
``l0tre_register_data_formats`` hook, and a third-party format plugin looks just like it.
Pillow is imported only when a folder of images is read.
"""

from __future__ import annotations

from typing import Callable

from l0tre_core import DataFormat, hookimpl
from l0tre_formats.csvfile import CsvFormat
from l0tre_formats.folder import FolderFormat
from l0tre_formats.idxfile import IdxFormat
from l0tre_formats.npzfile import NpzFormat

__version__ = "0.1.0"

__all__ = ["CsvFormat", "FolderFormat", "IdxFormat", "NpzFormat", "__version__", "l0tre_register_data_formats"]


@hookimpl
def l0tre_register_data_formats(register: Callable[[DataFormat], None]) -> None:
    # Formats claimed by suffix come first so that only unknown files are opened to sniff IDX magic.
    for fmt in (NpzFormat(), CsvFormat(), IdxFormat(), FolderFormat()):
        register(fmt)
