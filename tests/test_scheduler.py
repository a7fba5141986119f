"""The micro-batching scheduler: concurrent callers share batches and each gets exactly the vectors
a lone ``model.encode`` gives, in its own order; the queue is bounded; bad input fails alone."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from echo_embeddings.scheduler import BatchScheduler, QueueFullError, SchedulerClosedError

TEXTS = [f"Sentence number {i} says something {'rather ' * (i % 5)}different." for i in range(40)]


class Gated:
    """The model, with a gate its next ``encode`` waits at (to hold the worker inside a run)."""

    def __init__(self, model) -> None:
        self.model = model
        self.tokenizer = model.tokenizer
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.calls: list[int] = []
        self.during: dict[int, object] = {}  # call number -> what to do inside that call

    def encode(self, texts, **options):
        self.calls.append(len(texts))
        if len(self.calls) in self.during:
            self.during[len(self.calls)]()
        self.entered.set()
        self.gate.wait(30)
        return self.model.encode(texts, **options)

    def get_embedding_dimension(self) -> int:
        return self.model.get_embedding_dimension()


def held(model, first_texts=("held in the worker",), **options):
    """A scheduler whose worker is held inside its first run until ``gated.gate.set()``."""
    gated = Gated(model)
    scheduler = BatchScheduler(gated, **options)
    gated.gate.clear()
    first = scheduler.submit(list(first_texts))
    assert gated.entered.wait(10)
    return gated, scheduler, first


def lone(model, texts, task=None, instruction=None):
    options = {"instruction": instruction} if instruction else {}
    return model.encode(texts, task=task, convert_to_numpy=True, **options)


def test_threads_share_batches_and_get_their_own_vectors(make_model) -> None:
    model = make_model("echo")
    gated, scheduler, first = held(model, max_tokens_per_run=100_000)  # the others queue up meanwhile
    jobs = [(TEXTS[i : i + 5], ("query", "document", None)[i % 3], "Find it" if i % 2 else None) for i in range(0, 40, 5)]
    with ThreadPoolExecutor(8) as pool:
        futures = list(pool.map(lambda job: scheduler.submit(job[0], job[1], instruction=job[2]), jobs))
        gated.gate.set()
        results = [f.result(30) for f in futures]
    assert first.result(30).shape == (1, model.get_embedding_dimension())
    for (texts, task, instruction), vectors in zip(jobs, results):
        assert np.abs(vectors - lone(model, texts, task, instruction)).max() < 1e-4
    # 8 requests in at most 6 (task, instruction) groups, run together after the gate opened
    assert len(gated.calls) <= 1 + 6 and max(gated.calls) > 5
    assert scheduler.stats.requests == 9 and scheduler.stats.texts == 41
    scheduler.close()


def test_asyncio_tasks_share_batches(make_model) -> None:
    model = make_model("echo")
    scheduler = BatchScheduler(model)

    async def main():
        return await asyncio.gather(*(scheduler.aencode(TEXTS[i : i + 3], "document") for i in range(0, 30, 3)))

    results = asyncio.run(main())
    for i, vectors in zip(range(0, 30, 3), results):
        assert np.abs(vectors - lone(model, TEXTS[i : i + 3], "document")).max() < 1e-4
    normalized = scheduler.encode(TEXTS[:4], normalize=True)
    assert np.allclose(np.linalg.norm(normalized, axis=1), 1, atol=1e-5)
    scheduler.close()


def test_bad_input_fails_before_queueing_and_alone(make_model) -> None:
    scheduler = BatchScheduler(make_model("echo"))
    with pytest.raises(TypeError, match="Input 1 is int"):
        scheduler.submit(["fine", 3])
    with pytest.raises(ValueError, match="Unknown task 'querry'"):
        scheduler.submit(["fine"], "querry")
    assert scheduler.stats.requests == 0
    assert scheduler.encode(["fine"]).shape[0] == 1
    assert scheduler.submit([]).result().shape == (0, 32)
    scheduler.close()


def test_a_full_queue_refuses_or_waits(make_model) -> None:
    gated, scheduler, running = held(make_model("echo"), max_queued_texts=4)
    queued = scheduler.submit(TEXTS[:4])
    with pytest.raises(QueueFullError, match="holds 4 texts and takes at most 4"):
        scheduler.submit(["one more"])
    with pytest.raises(QueueFullError):
        scheduler.submit(["one more"], wait=True, timeout=0.2)
    with pytest.raises(ValueError, match="5 texts in one request exceed the queue's 4"):
        scheduler.submit(TEXTS[:5])
    waiting = ThreadPoolExecutor(1).submit(scheduler.encode, ["waits for room"])  # wait=True by default
    gated.gate.set()
    assert running.result(30).shape[0] == 1 and queued.result(30).shape[0] == 4 and waiting.result(30).shape[0] == 1
    assert scheduler.stats.rejected == 2
    scheduler.close()


def test_a_cancelled_request_is_dropped_and_the_others_run(make_model) -> None:
    gated, scheduler, _ = held(make_model("echo"))
    gone, kept = scheduler.submit(TEXTS[:3]), scheduler.submit(TEXTS[3:5])
    assert gone.cancel()
    gated.gate.set()
    assert kept.result(30).shape[0] == 2
    assert scheduler.stats.cancelled == 1 and 3 not in gated.calls[1:] and 5 not in gated.calls[1:]
    scheduler.close()


def test_a_failing_run_fails_its_callers_and_the_worker_goes_on(make_model) -> None:
    model = make_model("echo")

    class Flaky:
        def __init__(self) -> None:
            self.fail = True

        def encode(self, texts, **options):
            if self.fail:
                self.fail = False
                raise RuntimeError("out of luck")
            return model.encode(texts, **options)

        def get_embedding_dimension(self) -> int:
            return 32

    scheduler = BatchScheduler(Flaky())
    with pytest.raises(RuntimeError, match="out of luck"):
        scheduler.encode(["a"])
    assert scheduler.encode(["b"]).shape == (1, 32)
    assert scheduler.stats.failed == 1
    scheduler.close()


def test_close_finishes_the_queue_and_refuses_new_work(make_model) -> None:
    gated, scheduler, first = held(make_model("echo"))
    futures = [first, *(scheduler.submit([text]) for text in TEXTS[:4])]
    closer = threading.Thread(target=scheduler.close)
    closer.start()
    gated.gate.set()
    closer.join(30)
    assert all(f.result(0).shape == (1, 32) for f in futures)
    with pytest.raises(SchedulerClosedError):
        scheduler.submit(["late"])


def test_calls_run_on_the_worker_between_batches(make_model) -> None:
    scheduler = BatchScheduler(make_model("echo"))
    assert scheduler.call(lambda: threading.current_thread().name).result(10) == "echo-embeddings-scheduler"
    scheduler.close()



def test_the_owner_can_be_the_worker_in_its_own_thread(make_model) -> None:
    model = make_model("echo")
    scheduler = BatchScheduler(model, worker_thread=False)
    futures = [scheduler.submit(TEXTS[i : i + 4], "query") for i in range(0, 12, 4)]
    assert scheduler._worker is None and not any(f.done() for f in futures)  # nothing runs until the owner does
    owner = threading.Thread(target=scheduler.run_forever, name="owner")
    owner.start()
    assert scheduler.call(lambda: threading.current_thread().name).result(30) == "owner"
    with ThreadPoolExecutor(4) as pool:
        more = list(pool.map(lambda i: scheduler.encode(TEXTS[i : i + 3], "document"), range(12, 24, 3)))
    scheduler.close()  # from another thread: waits until run_forever has drained the queue and returned
    assert not owner.is_alive()
    for i, vectors in zip(range(0, 12, 4), (f.result(0) for f in futures)):
        assert np.abs(vectors - lone(model, TEXTS[i : i + 4], "query")).max() < 1e-4
    for i, vectors in zip(range(12, 24, 3), more):
        assert np.abs(vectors - lone(model, TEXTS[i : i + 3], "document")).max() < 1e-4
    with pytest.raises(RuntimeError, match="worker_thread=False"):
        BatchScheduler(model).run_forever()


def test_a_run_is_about_one_batch_and_small_requests_get_their_own_runs(make_model) -> None:
    """Behind a busy worker: a query waits for one short run of small requests, not behind the
    documents queued before it; the documents then go in arrival order, as many a run as the token
    budget allows, and runs of small requests alternate with them."""
    model = make_model("echo")
    question = "what is the sentence number?"
    counts = BatchScheduler(model).count_tokens([question, *TEXTS[:16]])
    assert counts == [len(ids) for ids in model.tokenizer([question, *TEXTS[:16]], add_special_tokens=False)["input_ids"]]
    budget = sum(counts[1:5]) + counts[0]  # room for a request of four, not for two
    assert budget < min(sum(counts[i : i + 8]) for i in range(1, 9, 4))
    gated, scheduler, first = held(model, TEXTS[30:32], max_tokens_per_run=budget, small_request_texts=1)
    documents = [scheduler.submit(TEXTS[i : i + 4], "document") for i in range(0, 16, 4)]
    query = scheduler.submit([question], "query")
    later: list = []
    gated.during[2] = lambda: later.append(scheduler.submit(["and the next one?"], "query"))  # while the query runs
    gated.gate.set()
    results = [f.result(30) for f in (first, *documents, query)] + [later[0].result(30)]
    # runs after the held one: the query alone, one request of documents, the second query, then the rest
    assert gated.calls[1:] == [1, 4, 1, 4, 4, 4]
    for i, vectors in zip(range(0, 16, 4), results[1:5]):
        assert np.abs(vectors - lone(model, TEXTS[i : i + 4], "document")).max() < 1e-4
    assert np.abs(results[5] - lone(model, [question], "query")).max() < 1e-4
    assert np.abs(results[6] - lone(model, ["and the next one?"], "query")).max() < 1e-4
    scheduler.close()


def test_a_small_turn_takes_small_requests_of_every_template(make_model) -> None:
    """A one-sentence query queued behind a one-sentence document of the other template does not
    wait for another turn: the small run embeds both, one encode call per template set."""
    model = make_model("echo")
    gated, scheduler, first = held(model, TEXTS[30:32], small_request_texts=1)
    documents = scheduler.submit(TEXTS[:8], "document")
    note = scheduler.submit([TEXTS[8]], "document")
    query = scheduler.submit(["what is the sentence number?"], "query", instruction="Find it")
    gated.gate.set()
    results = [f.result(30) for f in (first, note, query, documents)]
    assert gated.calls[1:] == [1, 1, 8]  # the small turn (both templates), then the documents
    assert np.abs(results[1] - lone(model, [TEXTS[8]], "document")).max() < 1e-4
    assert np.abs(results[2] - lone(model, ["what is the sentence number?"], "query", "Find it")).max() < 1e-4
    assert np.abs(results[3] - lone(model, TEXTS[:8], "document")).max() < 1e-4
    scheduler.close()



def test_the_run_budget_settles_where_a_run_takes_run_seconds(make_model) -> None:
    """The adaptive budget, fed the times of a model whose call costs 0.07 s plus a token a
    millisecond, settles where a full run takes ``run_seconds``; runs that were not full (a short
    queue) and a fixed budget leave it alone."""
    scheduler = BatchScheduler(make_model("echo"), run_seconds=0.5, worker_thread=False)
    start = scheduler.stats.run_tokens
    scheduler._adapt(start // 4, 0.01)  # a quarter of the budget: says nothing of the rate
    assert scheduler.stats.run_tokens == start
    for _ in range(30):
        tokens = scheduler.stats.run_tokens
        scheduler._adapt(tokens, 0.07 + tokens / 1000)
    assert abs(scheduler.stats.run_tokens - 430) <= 5  # 0.07 + 430 / 1000 = 0.5 s
    assert scheduler.snapshot()["run_tokens"] == scheduler.stats.run_tokens
    fixed = BatchScheduler(make_model("echo"), max_tokens_per_run=300, worker_thread=False)
    assert fixed.run_seconds is None and fixed.stats.run_tokens == 300
    with pytest.raises(ValueError, match="run_seconds must be positive, got 0"):
        BatchScheduler(make_model("echo"), run_seconds=0)


def test_a_fast_model_gets_a_larger_budget_under_load(make_model) -> None:
    """A tiny model embeds the starting budget in far less than the half second a run may take,
    so after one full run the budget grows, and the next run takes more of the queue."""
    model = make_model("echo")
    gated, scheduler, _ = held(model, TEXTS[30:32])
    start = scheduler.stats.run_tokens
    futures = [scheduler.submit(TEXTS[i % 40 : i % 40 + 2] * 4, "document") for i in range(0, 120, 2)]  # 60 requests of 8
    queued = sum(r.tokens for r in scheduler._queue)
    assert queued > 4 * start
    gated.gate.set()
    for i, future in zip(range(0, 120, 2), futures):
        assert np.abs(future.result(30) - lone(model, TEXTS[i % 40 : i % 40 + 2] * 4, "document")).max() < 1e-4
    assert scheduler.stats.run_tokens > 2 * start
    per_request = queued / len(futures)
    assert gated.calls[1] * per_request / 8 <= start + per_request  # the first run: the starting budget
    assert gated.calls[2] >= 4 * gated.calls[1]  # the next: the grown one
    scheduler.close()


def test_a_small_turn_fills_its_run_with_requests_of_the_same_template(make_model) -> None:
    """The query's run is not a short one of its own: the rest of its budget goes to the larger
    requests of the query's template, ahead of the documents queued before them."""
    model = make_model("echo")
    question = "what is the sentence number?"
    counts = BatchScheduler(model).count_tokens([question, *TEXTS[:8]])
    budget = counts[0] + sum(counts[5:9]) + 2  # the question and one request of four
    gated, scheduler, first = held(model, TEXTS[30:32], max_tokens_per_run=budget)
    documents = scheduler.submit(TEXTS[:4], "document")
    queries = scheduler.submit(TEXTS[4:8], "query")
    query = scheduler.submit([question], "query")
    gated.gate.set()
    results = [f.result(30) for f in (first, documents, queries, query)]
    assert gated.calls[1:] == [5, 4]  # the question with the other queries, then the documents
    assert np.abs(results[1] - lone(model, TEXTS[:4], "document")).max() < 1e-4
    assert np.abs(results[2] - lone(model, TEXTS[4:8], "query")).max() < 1e-4
    assert np.abs(results[3] - lone(model, [question], "query")).max() < 1e-4
    scheduler.close()
