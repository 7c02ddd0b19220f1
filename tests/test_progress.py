"""Progress lines: a resumed run's rate counts only this run's work."""

import io

from raygen.progress import Progress


def test_resumed_work_is_done_but_not_in_the_rate():
    out = io.StringIO()
    progress = Progress(100, "sampled", every_s=0.0, stream=out, already=90)
    assert progress.rate() == 0.0
    progress.update(10)
    assert progress.done == 100
    assert progress.rate() < 10 / 1e-3  # 10 items over a real (non-zero) time, not 100
    assert out.getvalue().startswith("sampled: 100/100 (100%")
