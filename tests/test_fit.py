"""harness/fit.py off the GPU: the batch sizes it tries, and the memory cap it refuses (the probe itself runs in
tests/test_gpu.py on a capped card).

    uv run pytest tests/test_fit.py
"""

from harness import fit


def test_candidates_halve_and_keep_the_optimizer_step():
    assert fit.candidates(128, 524288, 2048, 1) == [128, 64, 32, 16, 8, 4, 2, 1]
    assert fit.candidates(128, 524288, 2048, 4) == [64, 32, 16, 8, 4, 2, 1]      # 128 x 2048 x 4 > the step
    assert fit.candidates(96, 8192 * 3, 256, 1) == [96, 48, 24, 12, 6, 3, 1]    # each divides 24,576 / 256 = 96
    assert all(524288 % (b * 2048) == 0 for b in fit.candidates(128, 524288, 2048, 1))
