"""Progress lines: a resumed run's rate counts only this run's work."""

import io

from raygen import progress as progress_module
from raygen.progress import Progress


def test_resumed_work_is_done_but_not_in_the_rate(monkeypatch):
    clock = iter([100.0, 102.0, 102.0, 102.0])
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    progress = Progress(100, "sampled", every_s=0.0, stream=out, already=90)
    progress.update(10)  # 10 new items in 2 s
    assert progress.done == 100
    assert out.getvalue() == "sampled: 100/100 (100%, 5.0/s, 2s)\n"
