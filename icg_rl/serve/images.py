"""Reference images in, covers out: base64 decoding with the guards a public endpoint needs, PNG encoding.

A client's image is untrusted bytes: only PNG or JPEG, its pixel count checked from the header *before* any pixel is
decoded (a tiny PNG can declare 100k × 100k pixels and expand to gigabytes), truncated or corrupt data rejected.
Paths and URLs are refused outright: the server never opens anything a client names.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
from PIL import Image

ALLOWED_FORMATS = ("PNG", "JPEG")
_DATA_URL = re.compile(r"^data:image/(png|jpeg|jpg);base64,", re.IGNORECASE)
_LOOKS_LIKE_LOCATION = re.compile(r"^([a-z][a-z0-9+.-]*:|/|\.{1,2}/|~)", re.IGNORECASE)


class BadImage(ValueError):
    """A reference image the server refuses (reported as 400 with this message)."""


def decode_reference_image(value: str, max_pixels: int, field: str = "reference_image") -> np.ndarray:
    """base64 PNG/JPEG (optionally a data URL) -> uint8 RGB array (H, W, 3); BadImage names what is wrong."""
    payload = _DATA_URL.sub("", value.strip(), count=1)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        if _LOOKS_LIKE_LOCATION.match(value):  # ('/' is also a base64 character: JPEG's base64 starts '/9j/')
            raise BadImage(f"{field}: got a path or URL ({value[:40]!r}); send the image itself as base64 PNG or "
                           f"JPEG bytes — the server never opens paths or URLs") from None
        raise BadImage(f"{field}: not valid base64 ({error}); send base64 PNG or JPEG bytes") from None
    if not raw:
        raise BadImage(f"{field}: empty image; send base64 PNG or JPEG bytes or omit the field")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(raw), formats=ALLOWED_FORMATS)
            width, height = image.size  # from the header: nothing decoded yet
            if width * height > max_pixels:
                raise BadImage(f"{field}: {width}×{height} = {width * height} pixels exceeds the limit of {max_pixels} "
                               f"(limits.max_image_pixels)")
            image.load()
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
        except BadImage:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise BadImage(f"{field}: rejected as a decompression bomb ({error})") from None
        except Exception as error:  # PIL raises many types for hostile bytes (OSError, SyntaxError, ValueError, …)
            raise BadImage(f"{field}: not a readable PNG or JPEG image ({type(error).__name__}: "
                           f"{str(error)[:120]})") from None


def encode_image(image: np.ndarray, fmt: str = "PNG") -> str:
    """uint8 (H, W, 3) -> base64 PNG (the covers we return; same pixels, same bytes) or JPEG (for clients)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
