"""Smoke test of benchmarks/param_counts.py's per-family table: the published layouts build on the meta device and
count what their releases state (SD1.5 UNet 859.5 M, SDXL UNet 2.567 B parameters)."""

from tests.conftest import load_benchmark


def test_real_denoisers_count_their_published_sizes():
    rows = {family: (base, adapter) for family, base, adapter in load_benchmark("param_counts").denoiser_rows()}
    assert set(rows) == {"SD1.5 UNet", "SDXL UNet", "SD3.5-Medium MMDiT"}
    assert rows["SD1.5 UNet"][0] == 859_520_964 and rows["SDXL UNet"][0] == 2_567_463_684
    assert 2.2e9 < rows["SD3.5-Medium MMDiT"][0] < 2.3e9  # 2.5 B with the 384² × 1536 position-embedding buffer
    assert all(0 < adapter < 0.2 * base for base, adapter in rows.values())
