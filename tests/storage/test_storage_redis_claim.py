"""Redis Streams consumer group: entries a dead consumer read but never acknowledged are taken over
(XAUTOCLAIM) by the live one — at its start and while it runs — and nothing is read twice."""

from __future__ import annotations

import time

from storage.bus import RedisConsumer, RedisPublisher


def _points(i: int) -> dict:
    return {"type": "points", "run_id": f"run{i}", "attempt": 1, "seq": 0, "step": [0], "metric": ["train_loss"],
            "value": [float(i)]}


def _drain(consumer: RedisConsumer, rounds: int = 20) -> list:
    got = []
    for _ in range(rounds):
        batch = consumer.read(max_events=100, block_s=0.05)
        got += batch
        consumer.ack(batch)
    return got


def test_a_dead_consumers_entries_are_claimed_while_the_live_one_runs(redis_url: str) -> None:
    with RedisPublisher(redis_url) as publisher:
        live = RedisConsumer(redis_url, consumer="live", claim_idle_s=0.3)
        assert _drain(live) == []  # running, nothing to do yet
        publisher.publish_many([_points(i) for i in range(5)])
        dead = RedisConsumer(redis_url, consumer="dead", claim_idle_s=0.3)
        taken = dead.read(max_events=3, block_s=0.05)  # read, then "dies" without acking
        assert len(taken) == 3
        got = _drain(live, rounds=3)  # the two the dead one did not take
        assert sorted(d.event["run_id"] for d in got) == ["run3", "run4"]
        time.sleep(0.4)  # the dead consumer's entries become idle long enough to claim
        got += _drain(live, rounds=10)
        assert sorted(d.event["run_id"] for d in got) == [f"run{i}" for i in range(5)]  # each exactly once
        assert live.pending_count() == 0
        live.close()
        dead.close()
