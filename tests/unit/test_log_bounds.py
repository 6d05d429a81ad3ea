"""Which next offsets count as outside their log (``streams.log_bounds.outside``), on both brokers."""

from __future__ import annotations

from streams.log_bounds import outside


def test_inside_the_log_is_kept_up_to_and_including_its_end() -> None:
    assert outside(0, 0, 0, None) is None  # an empty log, nothing read yet
    assert outside(7, 0, 10, None) is None
    assert outside(10, 0, 10, None) is None  # the next record to be written


def test_kafka_a_listed_end_below_the_offset_is_a_replaced_log() -> None:
    # Kafka lists the exact end; the probe's high watermark says the same.
    assert outside(300, 0, 60, 60) == "past_end"
    assert outside(61, 0, 60, 60) == "past_end"


def test_tansu_an_offset_inside_the_last_batch_is_not_past_the_end() -> None:
    # Tansu lists the last batch's base + 1 (12) while the log holds 16 records: the probe's
    # high watermark is exact, and an offset up to it is healthy.
    assert outside(16, 0, 12, 16) is None
    assert outside(14, 0, 12, 16) is None
    assert outside(17, 0, 12, 16) == "past_end"
    assert outside(300, 0, 12, 16) == "past_end"


def test_an_unanswered_probe_keeps_the_offset_and_retention_moves_the_start() -> None:
    assert outside(300, 0, 12, None) is None  # no figure to act on: kept (and logged by the caller)
    assert outside(5, 40, 90, None) == "before_start"
    assert outside(40, 40, 90, None) is None
