"""advx.progress: one progress bar for the whole job, counting every rank's work."""

import time

import torch


def test_the_job_bar_counts_every_ranks_work_and_waits_for_the_last():
    """Rank 0's bar sums what every rank puts in the store, and its close() returns only once
    the other rank has closed it (rank 0 finished its share first here)."""
    import threading

    from advx.progress import JobBar

    store = torch.distributed.HashStore()
    zero = JobBar(store, 50, rank=0, size=2, key="bar", leave=False)
    one = JobBar(store, 30, rank=1, size=2, key="bar")
    assert one.tqdm is None  # only rank 0 draws
    zero.update(50)
    zero.poll_seconds = 0.01
    closing = threading.Thread(target=zero.close)
    closing.start()
    time.sleep(0.1)
    assert closing.is_alive() and zero.tqdm.n == 50 and zero.tqdm.total == 80  # waits for rank 1
    one.update(10)
    one.update(20)
    one.close()
    closing.join(timeout=5)
    assert not closing.is_alive() and zero.tqdm.n == 80


def test_the_job_bar_does_not_wait_for_a_rank_that_never_opens_it():
    from advx.progress import JobBar

    zero = JobBar(torch.distributed.HashStore(), 20, rank=0, size=2, key="bar", leave=False)
    zero.update(20)
    zero.close()  # all the counted work is done: no hang
    assert zero.tqdm.n == 20
