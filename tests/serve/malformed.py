"""Generated malformed cover requests (hypothesis strategies): every one must be refused with a 4xx naming what is
wrong. Shared by tests/serve/test_robustness.py (a few hundred) and benchmarks/serve_fuzz.py (thousands).

What is "always wrong" depends on the application: the policy and experiment names and the LIMITS here are those
the test application (tests/serve/conftest.py) and the benchmark deploy.
"""

from __future__ import annotations

import base64
import json
import string

from hypothesis import strategies as st

POLICIES = ("default", "seed1")
EXPERIMENT = "cover_ab"
LIMITS = {"max_body_bytes": 256 * 1024, "max_image_pixels": 512 * 512, "max_num_images": 4, "max_steps": 20,
          "max_history": 16}  # max_title_chars and max_guidance_scale: the defaults (512, 20.0)
VALID = {"title": "Ashes of the Northern Sea", "seed": 5, "num_inference_steps": 2}
FIELDS = ("title", "reference_image", "user_id", "history", "num_images", "seed", "num_inference_steps",
          "guidance_scale", "policy", "experiment")
letters = st.text(alphabet=string.ascii_letters + "!? ", min_size=1, max_size=12)
non_integral = st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not float(x).is_integer())
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=4), max_leaves=12)
# per field, values that are always wrong (type, range or the server's limits)
WRONG = {
    "title": st.none() | st.integers() | st.just("") | st.lists(st.text(), max_size=3)
    | st.text(alphabet="ab", min_size=513, max_size=520),
    "reference_image": st.integers() | st.text(alphabet="!@#$%^&*()", min_size=1, max_size=30)
    | st.binary(min_size=1, max_size=64).map(lambda b: base64.b64encode(b).decode())
    | st.sampled_from(["file:///etc/passwd", "http://169.254.169.254/latest", "../../secrets.png", "~/x.png"]),
    "user_id": st.integers() | st.just("") | st.text(alphabet="u", min_size=129, max_size=140) | st.lists(st.text()),
    "history": letters | st.lists(st.integers(), min_size=1, max_size=3) | st.lists(st.just(""), min_size=1)
    | st.lists(st.just("i00001"), min_size=17, max_size=20),
    "num_images": st.integers(max_value=0) | st.integers(min_value=5) | letters | non_integral,
    "seed": st.integers(max_value=-1) | st.integers(min_value=2**63) | letters | non_integral,
    "num_inference_steps": st.integers(max_value=0) | st.integers(min_value=21, max_value=10**12) | letters,
    "guidance_scale": st.floats(max_value=0.999) | st.floats(min_value=20.001) | letters,
    "policy": st.integers() | st.just("") | letters.filter(lambda s: s not in POLICIES)
    | st.text(alphabet="p", min_size=65, max_size=70) | st.lists(st.sampled_from(POLICIES), min_size=1, max_size=2),
    "experiment": st.integers() | st.just("") | letters.filter(lambda s: s != EXPERIMENT)
    | st.sampled_from(list(POLICIES)),
}


@st.composite
def malformed(draw) -> tuple[bytes, dict]:
    """(body bytes, headers) that must be refused with a 4xx."""
    kind = draw(st.sampled_from(["bytes", "json", "field", "extra", "headers", "both"]))
    headers = {"content-type": "application/json"}
    if kind == "bytes":
        body = draw(st.binary(max_size=256).filter(lambda b: not _is_valid_json_object(b)))
    elif kind == "json":  # any JSON that is not an object with a title
        value = draw(json_values.filter(lambda v: not (isinstance(v, dict) and "title" in v)))
        body = json.dumps(value).encode()
    elif kind == "field":
        field = draw(st.sampled_from(FIELDS))
        body = json.dumps(VALID | {field: draw(WRONG[field])}).encode()
    elif kind == "both":  # a policy and an experiment: one or the other
        body = json.dumps(VALID | {"policy": draw(st.sampled_from(POLICIES)), "experiment": EXPERIMENT}).encode()
    elif kind == "extra":
        key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in FIELDS))
        body = json.dumps(VALID | {key: draw(json_values)}).encode()
    else:  # a valid body sent as something else, or a body cut short
        body = json.dumps(VALID).encode()
        if draw(st.booleans()):
            headers = {"content-type": draw(st.sampled_from(["text/plain", "application/xml", "image/png", ""]))}
            body = b"<" + body
        else:
            body = body[: draw(st.integers(0, len(body) - 1))]
    return body, headers


def _is_valid_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, UnicodeDecodeError):
        return False


