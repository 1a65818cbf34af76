"""Open Inference Protocol datatypes and their NumPy equivalents."""

from __future__ import annotations

import ml_dtypes
import numpy as np

#: OIP datatype name -> NumPy dtype (little-endian). BYTES items are Python ``bytes``
#: in an object array.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}

DATATYPES = frozenset(NUMPY_DTYPES)

_BY_NUMPY: dict[np.dtype, str] = {dt: name for name, dt in NUMPY_DTYPES.items() if name != "BYTES"}

#: Which InferTensorContents field carries each datatype when sent typed. FP16 and
#: BF16 have no typed field in the protocol: they travel only as raw bytes.
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype name for a NumPy array (object and string arrays are BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return _BY_NUMPY[array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype]
    except KeyError:
        raise TypeError(f"no Open Inference Protocol datatype for numpy dtype {array.dtype}") from None
